"""Logit lens and direct logit attribution on tiny Llama (RMS norm) and GPT-2 (LayerNorm) models."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.lens import direct_logit_attribution, logit_lens
from jaxinterp.models import init_params
from jaxinterp.models.gpt2 import GPT2Config
from tests.attention_fixtures import tiny_decoder

TOKENS = np.array([[3, 9, 14, 21, 5, 11, 7], [4, 8, 15, 16, 23, 42, 0]], np.int32)
MASK = np.ones_like(TOKENS, bool)
MASK[1, 6] = False  # right padding: row 1 ends at token 5


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    if request.param == "llama":
        return tiny_decoder(layers=2)
    config = GPT2Config(vocab_size=48, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4)
    params = jax.tree.map(lambda x: x * 3.0, init_params(config, jax.random.key(2)))  # non-trivial biases
    return ji.Model(config, params)


def by_hand_norm(model, x):
    norm, cfg = model.params["final_norm"], model.config
    if "bias" in norm:
        x = x - x.mean(-1, keepdims=True)
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.layer_norm_eps) * norm["scale"] + norm["bias"]
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.rms_norm_eps) * norm["scale"]


def unembedding(model):
    return np.asarray(model.params.get("lm_head", model.params["embed"]))


def test_logit_lens_last_layer_is_the_logits_and_earlier_layers_the_head(model):
    batch = ji.make_batch(TOKENS, MASK)
    lens = logit_lens(model, batch)
    run = model.run(batch, capture=["blocks.0.resid_post"])
    assert lens.shape == (2,) + run.logits.shape
    np.testing.assert_allclose(np.asarray(lens[-1]), np.asarray(run.logits), atol=1e-5)
    expected = by_hand_norm(model, np.asarray(run["blocks.0.resid_post"])) @ unembedding(model).T
    np.testing.assert_allclose(np.asarray(lens[0]), expected, atol=1e-4)


def test_dla_terms_sum_to_the_logit_difference(model):
    batch = ji.make_batch(TOKENS, MASK)
    dla = direct_logit_attribution(model, batch, answer=np.array([5, 6]), wrong=7)
    assert dla.heads.shape == (2, 2, 4) and dla.mlps.shape == (2, 2)
    logits = np.asarray(model(batch))
    expected = np.array([logits[0, 6, 5] - logits[0, 6, 7], logits[1, 5, 6] - logits[1, 5, 7]])
    np.testing.assert_allclose(dla.logit_diff, expected, atol=1e-5)
    np.testing.assert_allclose(dla.total(), expected, atol=1e-4)
    assert np.all(np.abs(dla.heads) > 0) and np.all(np.abs(dla.mlps) > 0)


def test_dla_of_one_head_by_hand(model):
    """Head h of layer 1: its output through its rows of the output projection, through the frozen norm."""
    batch = ji.make_batch(TOKENS, MASK)
    dla = direct_logit_attribution(model, batch, answer=5, wrong=7)
    run = model.run(batch, capture=["blocks.1.attn.head_out", "blocks.1.resid_post"])
    z = np.asarray(run["blocks.1.attn.head_out"])[0, 6, 2]  # [Dh]
    head = z @ np.asarray(model.params["blocks_1"]["o_proj"]["kernel"])[2]  # [D]
    x = np.asarray(run["blocks.1.resid_post"])[0, 6]
    norm, cfg = model.params["final_norm"], model.config
    if "bias" in norm:
        sigma, head = np.sqrt(x.var() + cfg.layer_norm_eps), head - head.mean()
    else:
        sigma = np.sqrt((x * x).mean() + cfg.rms_norm_eps)
    u = unembedding(model)
    assert dla.heads[0, 1, 2] == pytest.approx(float(head / sigma * np.asarray(norm["scale"]) @ (u[5] - u[7])), abs=1e-5)


def test_dla_needs_a_final_norm():
    model = tiny_decoder(layers=2)
    bare = ji.Model(model.config, {k: v for k, v in model.params.items() if k != "final_norm"})
    with pytest.raises(ji.ArgumentError, match="needs a final norm"):
        direct_logit_attribution(bare, TOKENS[:1], 5, 7)
