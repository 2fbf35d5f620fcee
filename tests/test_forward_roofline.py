"""The forward benchmark: its floor counts exactly the products a Llama forward runs with its weights,
and the README shows its results file as the benchmark prints it."""

import json
import pathlib

import jax
import pytest

from benchmarks.forward import markdown, weight_products
from jaxinterp.models import init_params
from jaxinterp.models.llama import LlamaConfig


@pytest.mark.parametrize("tied", [False, True])
def test_weight_products_cover_every_matrix_parameter_once(tied):
    config = LlamaConfig(vocab_size=40, hidden_size=24, intermediate_size=56, num_layers=3, num_heads=6,
                         num_kv_heads=2, head_dim=6, tie_word_embeddings=tied)
    params = init_params(config, jax.random.key(0))
    matrices = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(params)
                   if x.ndim >= 2 and (tied or "embed" not in jax.tree_util.keystr(path)))
    counted = sum(inputs * outputs * count for (inputs, outputs), count in weight_products(config).items())
    assert counted == matrices


def test_readme_shows_the_forward_results_file():
    """The Performance table and its floor sentence are `markdown(results)` of the committed results file."""
    root = pathlib.Path(__file__).resolve().parents[1]
    results = json.loads((root / "results/forward/results.json").read_text())
    readme = (root / "README.md").read_text()
    for block in markdown(results).split("\n\n"):
        assert block in readme, block
