"""The one program: wrappers survive every path, thoughts are input embeddings, and nothing
outside the core runs a model another way."""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.attribution import attribute
from jaxinterp.methods import latent
from jaxinterp.methods.positions import with_scheme
from jaxinterp.models import init_params
from jaxinterp.models.llama import LlamaConfig
from tests.attention_fixtures import tiny_vlm, vlm_batch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_identity_scheme_leaves_attribution_unchanged():
    """Regression: the raster scheme (an identity) used to score targets on its own-position logits."""
    vlm = tiny_vlm()
    batch = vlm_batch(vlm, answers=True)
    scheme = with_scheme(vlm, "raster")
    np.testing.assert_allclose(scheme(batch), vlm(batch), atol=1e-5)
    for method in ("grad_cam", "integrated_gradients"):
        plain, wrapped = attribute(vlm, batch, method=method), attribute(scheme, batch, method=method)
        np.testing.assert_allclose(wrapped.values, plain.values, atol=1e-5)
        np.testing.assert_allclose(wrapped.image, plain.image, atol=1e-5)


def test_scheme_changes_the_mask_not_the_objective():
    vlm = tiny_vlm()
    scheme = with_scheme(vlm, "raster")
    assert not scheme.config.causal and scheme.next_token and scheme.config.objective == "next_token"
    assert scheme.edits and scheme.prepare and scheme.params is vlm.params


@pytest.mark.parametrize("kind", ["gpt2", "smol"])
def test_thoughts_are_inputs_embeds(kind, tiny_checkpoint):
    """Regression: thoughts written into GPT-2 replaced token + position embedding; they must mean
    what transformers' `inputs_embeds` means (the position embedding is still added)."""
    import torch

    folder, reference = tiny_checkpoint(kind)
    model = ji.load(folder)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.config.vocab_size, (2, 9)).astype(np.int32)
    slots = np.array([[3, 4], [5, 6]], np.int32)
    thoughts = rng.normal(size=(2, 2, model.config.hidden_size)).astype(np.float32)
    ours = np.asarray(model(tokens, edits=latent.write_thoughts(jnp.asarray(thoughts), jnp.asarray(slots))))
    with torch.no_grad():
        embeds = reference.get_input_embeddings()(torch.as_tensor(tokens, dtype=torch.long)).clone()
        for row in range(2):
            embeds[row, slots[row]] = torch.as_tensor(thoughts[row])
        expected = reference(inputs_embeds=embeds).logits.float().numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=1e-5)


def test_transforms_need_thoughts_first():
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_layers=1,
                         num_heads=2, num_kv_heads=1, head_dim=4)
    model = ji.Model(config, init_params(config, jax.random.key(0)))
    slots = jnp.array([[1]], jnp.int32)
    shift = latent.SlotTransform(positions=slots, fn=lambda z, args: z + 1.0)
    with pytest.raises(ji.ArgumentError, match="write_thoughts"):
        model(np.zeros((1, 4), np.int32), edits=shift)


def test_no_module_outside_the_core_runs_the_model_its_own_way():
    pattern = re.compile(r"models\.forward\(|\bforward\(config|\._edits\(|\._decode\(|\._forward\b|\._grad\b")
    core = {ROOT / "jaxinterp" / "model.py", ROOT / "jaxinterp" / "models" / "__init__.py"}
    offenders = [f"{path.relative_to(ROOT)}:{n}" for folder in ("jaxinterp", "experiments", "benchmarks")
                 for path in sorted((ROOT / folder).rglob("*.py")) if path not in core
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders
