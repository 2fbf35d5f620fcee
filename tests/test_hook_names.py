"""TransformerLens hook names resolve to the same captured arrays as our site names."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.models import init_params
from jaxinterp.models.hook_names import TRANSFORMER_LENS, translate
from jaxinterp.models.llama import LlamaConfig

CONFIG = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                     head_dim=8)


@pytest.fixture(scope="module")
def model():
    return ji.Model(CONFIG, init_params(CONFIG, jax.random.key(0)))


def test_every_hook_name_captures_what_our_name_captures(model):
    tokens = np.arange(5, dtype=np.int32)[None]
    for hook, site in TRANSFORMER_LENS.items():
        top_level = hook in ("hook_embed", "ln_final.hook_normalized")
        theirs, ours = (hook, site) if top_level else (f"blocks.1.{hook}", f"blocks.1.{site}")
        run = model.run(tokens, capture=theirs)
        assert list(run.captured) == [ours]
        np.testing.assert_array_equal(run[ours], model.run(tokens, capture=ours)[ours])


def test_globs_edits_and_unknown_hooks(model):
    assert translate("blocks.*.attn.hook_pattern") == "blocks.*.attn.probs"
    assert translate("blocks.0.hook_resid_post") == "blocks.0.resid_post"
    assert len(model.resolve_capture("blocks.*.attn.hook_pattern")) == 2
    tokens = np.arange(5, dtype=np.int32)[None]
    zero = ji.FunctionEdit(patterns=("blocks.0.attn.hook_z",), fn=lambda x, ctx, _: x * 0)
    run = model.run(tokens, edits=zero, capture="blocks.0.attn.head_out")
    assert not np.asarray(run["blocks.0.attn.head_out"]).any()
    with pytest.raises(ji.SiteError, match="ln1.hook_normalized"):
        model.run(tokens, capture="blocks.0.ln1.hook_normalized")
