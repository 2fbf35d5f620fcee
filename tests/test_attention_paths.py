"""The fused attention path equals the materialised one, and is chosen per layer.

A layer materialises its [B, H, T, S] pattern only when something observes `attn.scores` or
`attn.probs`; sequences here are longer than one query block (`MIN_BLOCK`) so the fused path
runs several blocks and skips the keys a causal mask hides.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import models
from jaxinterp.models import init_params, make_batch
from jaxinterp.models.attention import MIN_BLOCK
from jaxinterp.models.gpt2 import GPT2Config
from jaxinterp.models.llama import LlamaConfig

LENGTH = 2 * MIN_BLOCK + 37  # three query blocks, the last one short
VOCAB = 64

CONFIGS = {
    "gqa": LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, max_position_embeddings=512),
    "window": LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                          num_kv_heads=1, head_dim=8, sliding_window=50, window_layers=(1,),
                          max_position_embeddings=512),
    "bidirectional": LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                                 num_kv_heads=2, head_dim=16, causal=False, max_position_embeddings=512),
    "gpt2": GPT2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       max_position_embeddings=512),
}


def _model(kind: str) -> ji.Model:
    config = CONFIGS[kind]
    params = init_params(config, jax.random.key(3))
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, params)  # peaked attention, O(1) logits
    return ji.Model(config, params)


def _batch(padding: str):
    """Two rows, the second 90 tokens shorter, padded on the given side."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (2, LENGTH)).astype(np.int32)
    mask = np.ones((2, LENGTH), bool)
    if padding == "left":
        mask[1, :90] = False
    else:
        mask[1, -90:] = False
    return make_batch(tokens, mask)


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_fused_logits_equal_materialised(kind, padding):
    model, batch = _model(kind), _batch(padding)
    fused = model.run(batch)
    materialised = model.run(batch, capture=["blocks.*.attn.probs"])
    # every position, padding rows included (a query that sees no key averages every value on both paths)
    np.testing.assert_allclose(fused.logits, materialised.logits, rtol=1e-4, atol=1e-4)
    assert float(jnp.std(materialised.logits)) > 0.1  # a real signal, not a vanishing one


@pytest.mark.parametrize("kind", ["gqa", "window"])
def test_fused_gradients_equal_materialised(kind):
    model, batch = _model(kind), _batch("right")
    objective = lambda run: jnp.sum(run.logits[:, -40:, :5] ** 2)  # noqa: E731 -- one object, one compile
    value, grads = model.grad(objective, batch, wrt=["blocks.*.resid_pre"])
    value_m, grads_m = model.grad(objective, batch, wrt=["blocks.*.resid_pre"], capture=["blocks.*.attn.scores"])
    np.testing.assert_allclose(value, value_m, rtol=1e-5)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_m[name], rtol=1e-4, atol=1e-4 * float(jnp.abs(grads_m[name]).max()))


def _full_patterns(model: ji.Model, batch, **run) -> int:
    """How many [B, H, T, T] float32 softmax inputs the compiled forward holds (materialised layers)."""
    fn = lambda params, batch: models.forward(model.config, params, batch, **run)  # noqa: E731
    jaxpr = jax.make_jaxpr(fn)(model.params, batch)
    heads = model.config.num_heads
    full = (batch.tokens.shape[0], heads, LENGTH, LENGTH)
    return sum(1 for eqn in jaxpr.eqns for var in eqn.outvars
               if eqn.primitive.name == "exp" and tuple(var.aval.shape) == full)


def test_only_observed_layers_materialise():
    model, batch = _model("gqa"), _batch("right")
    assert _full_patterns(model, batch) == 0
    assert _full_patterns(model, batch, capture=("blocks.1.attn.probs",)) == 1
    assert _full_patterns(model, batch, capture=("blocks.*.attn.scores",)) == 2
    edit = ji.ScaleHead(layer=0, head=1, scale=0.0)  # an edit on attn.head_out leaves patterns fused
    assert _full_patterns(model, batch, edits=(edit,)) == 0


def test_edit_on_probs_matches_explicit_reference():
    """An edit that changes the pattern takes the materialised path and acts on it."""
    model, batch = _model("gqa"), _batch("right")
    edit = ji.FunctionEdit(("blocks.0.attn.probs",), lambda p, ctx, _: p.at[:, 0].set(p[:, 1]))
    edited = model.run(batch, edits=edit).logits
    assert not np.allclose(edited, model.run(batch).logits, atol=1e-3)
    probs = model.run(batch, capture=["blocks.0.attn.probs"], edits=edit)["blocks.0.attn.probs"]
    np.testing.assert_allclose(probs[:, 0], probs[:, 1])


@pytest.mark.parametrize("kind", ["gqa", "gpt2"])
def test_remat_gradients_equal_plain(kind):
    """`grad(remat=True)` recomputes blocks in the backward pass and gives the same values and captures."""
    model, batch = _model(kind), _batch("left")
    objective = lambda run: jnp.sum(run.logits[:, -3:] ** 2) + jnp.sum(run["blocks.1.mlp.out"])  # noqa: E731
    value, grads = model.grad(objective, batch, wrt=["blocks.*.resid_pre", "blocks.0.attn.probs"],
                              capture=["blocks.1.mlp.out"])
    value_r, grads_r = model.grad(objective, batch, wrt=["blocks.*.resid_pre", "blocks.0.attn.probs"],
                                  capture=["blocks.1.mlp.out"], remat=True)
    np.testing.assert_allclose(value_r, value, rtol=1e-6)
    for name in grads:
        np.testing.assert_allclose(grads_r[name], grads[name], rtol=1e-4, atol=1e-5 * float(jnp.abs(grads[name]).max()))


def test_remat_lowers_the_compiled_peak():
    """A remat gradient keeps one block's activations at a time: the compiled program's temporary
    memory is at most half the plain one's (`jax.checkpoint` alone saves nothing on XLA's CPU backend)."""
    config = dataclasses.replace(CONFIGS["gqa"], num_layers=8)
    model = ji.Model(config, init_params(config, jax.random.key(3)))
    batch = _batch("right")

    def temporary_bytes(remat: bool) -> int:
        def loss(deltas):
            out, _ = models.forward(model.config, model.params, batch, deltas=deltas, remat=remat)
            return jnp.sum(out.logits)

        deltas = {"blocks.0.resid_pre": jnp.zeros((2, LENGTH, 32))}
        return jax.jit(jax.grad(loss)).lower(deltas).compile().memory_analysis().temp_size_in_bytes

    assert temporary_bytes(True) <= 0.5 * temporary_bytes(False)


def test_remat_differentiates_what_the_blocks_close_over():
    """An edit's vector (closed over by every recomputed block) gets the same gradient with remat."""
    model, batch = _model("gqa"), _batch("right")

    def loss(vector, remat):
        out, _ = models.forward(model.config, model.params, batch, edits=(ji.AddToResidual(layer=1, vector=vector),),
                                remat=remat)
        return jnp.sum(out.logits[:, -1] ** 2)

    vector = jnp.full(32, 0.1)
    plain, recomputed = jax.grad(loss)(vector, False), jax.grad(loss)(vector, True)
    assert float(jnp.abs(plain).max()) > 1e-3
    np.testing.assert_allclose(recomputed, plain, rtol=1e-4, atol=1e-6 * float(jnp.abs(plain).max()))
