"""Site identities on the real default model: edits, deltas, captures and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.models.sites import Context

TEXT = "The capital of France is Paris, and the capital of Italy is"


@pytest.fixture(scope="module")
def plain(smollm2):
    return smollm2.run(TEXT)


def test_identity_edit_and_zero_delta_change_nothing(smollm2, plain):
    identity = ji.FunctionEdit(patterns=("blocks.*",), fn=lambda x, ctx, args: x)
    edited = smollm2(TEXT, edits=identity)
    np.testing.assert_allclose(edited, plain.logits, atol=1e-6, rtol=0)
    shapes = smollm2.site_shapes(TEXT)
    zeros = {name: jnp.zeros(shapes[name].shape, shapes[name].dtype) for name in ("blocks.3.resid_post", "blocks.7.attn.probs")}
    np.testing.assert_allclose(smollm2.run(TEXT, deltas=zeros).logits, plain.logits, atol=1e-6, rtol=0)


def test_captured_probs_are_distributions_and_capture_is_what_the_forward_used(smollm2):
    run = smollm2.run(TEXT, capture=["blocks.*.attn.probs", "blocks.12.resid_post", "blocks.13.resid_pre"])
    assert len([k for k in run.captured if k.endswith("attn.probs")]) == smollm2.config.num_layers
    probs = np.asarray(run["blocks.4.attn.probs"])
    assert probs.shape[1] == smollm2.config.num_heads
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(probs[0, 0], k=1) == 0.0)  # causal
    np.testing.assert_array_equal(run["blocks.12.resid_post"], run["blocks.13.resid_pre"])


def test_grad_matches_central_finite_difference(smollm2):
    site = "blocks.3.resid_post"
    target = smollm2.tokenizer(" Rome", add_special_tokens=False)["input_ids"][0]

    def objective(run):
        return jax.nn.log_softmax(run.logits[0, -1])[target]

    value, grads = smollm2.grad(objective, TEXT, wrt=[site])
    direction = jax.random.normal(jax.random.key(0), grads[site].shape)

    def at(scale):
        return float(objective(smollm2.run(TEXT, deltas={site: scale * direction})))

    def central(h):
        return (at(h) - at(-h)) / (2 * h)

    # Richardson extrapolation cancels the h^2 term, so a step large enough to keep float32
    # round-off small still gives an O(h^4)-accurate derivative. The forward's round-off (about
    # 1e-6 over 30 float32 blocks, its pattern set by the CPU and the summation order) still
    # limits the estimate: 3.6e-5 to 1.3e-3 relative seen on two CPUs, 2.5e-3 at h = 0.01. So
    # this check catches a wrong gradient (off by O(1)) at 5e-3; the exact check is `jvp` below.
    h = 0.04
    finite = (4 * central(h / 2) - central(h)) / 3
    analytic = float(jnp.vdot(grads[site], direction))
    assert abs(analytic) > 1e-2
    assert abs(finite - analytic) <= 5e-3 * abs(analytic)
    # forward mode has no step: the reverse-mode gradient equals the directional derivative, up to
    # float32 summation order over 30 blocks (1.5e-5 relative seen on a 2-worker run)
    _, forward = jax.jvp(lambda scale: objective(smollm2.run(TEXT, deltas={site: scale * direction})), (0.0,), (1.0,))
    assert abs(float(forward) - analytic) <= 1e-4 * abs(analytic)
    assert np.isclose(float(value), at(0.0), atol=1e-5)


def test_zeroing_probs_equals_zeroing_head_out(smollm2):
    layer, head = 5, 3
    zero_probs = ji.PatternFromScores(
        layers=(layer,),
        fn=lambda scores, ctx: jax.nn.softmax(scores, axis=-1) * (jnp.arange(scores.shape[1]) != head)[None, :, None, None],
    )
    zero_head = ji.ScaleHead(layer=layer, head=head, scale=0.0)
    a, b = smollm2(TEXT, edits=zero_probs), smollm2(TEXT, edits=zero_head)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert np.abs(np.asarray(a) - np.asarray(smollm2(TEXT))).max() > 1e-3  # the edit did something


def test_set_head_and_residual_steering(smollm2, plain):
    run = smollm2.run(TEXT, edits=ji.SetHead(layer=2, head=1, value=0.5), capture="blocks.2.attn.head_out")
    np.testing.assert_array_equal(run["blocks.2.attn.head_out"][:, :, 1], 0.5)
    vector = jax.random.normal(jax.random.key(1), (smollm2.config.hidden_size,))
    steered = smollm2.run(TEXT, edits=ji.AddToResidual(layer=6, vector=vector, positions=jnp.array([4])),
                          capture=["blocks.6.resid_post", "blocks.6.resid_mid"])
    base = smollm2.run(TEXT, capture="blocks.6.resid_post")
    diff = np.asarray(steered["blocks.6.resid_post"] - base["blocks.6.resid_post"])
    np.testing.assert_allclose(diff[0, 4], vector, atol=1e-4)
    np.testing.assert_allclose(diff[0, :4], 0.0, atol=0)
    np.testing.assert_allclose(steered.logits[0, :4], plain.logits[0, :4], atol=1e-5)


def test_new_edit_numbers_do_not_recompile(smollm2):
    traces = []

    class Counting(ji.ScaleHead):
        def __call__(self, x, ctx: Context):
            traces.append(ctx.site)
            return super().__call__(x, ctx)

    Counting = jax.tree_util.register_dataclass(Counting, data_fields=["head", "scale"], meta_fields=["layer"])
    first = smollm2(TEXT, edits=Counting(layer=4, head=jnp.int32(0), scale=jnp.float32(0.0)))
    second = smollm2(TEXT, edits=Counting(layer=4, head=jnp.int32(5), scale=jnp.float32(0.5)))
    assert len(traces) == 1
    assert np.abs(np.asarray(first) - np.asarray(second)).max() > 1e-4
    smollm2(TEXT, edits=Counting(layer=9, head=jnp.int32(0), scale=jnp.float32(0.0)))
    assert len(traces) == 2  # new structure (another layer): compiled once more


def test_compose_applies_in_order(smollm2):
    double = ji.FunctionEdit(patterns=("blocks.3.attn.head_out",), fn=lambda x, ctx, a: x * a, args=2.0)
    zero = ji.ScaleHead(layer=3, head=jnp.arange(9), scale=0.0)
    run = smollm2.run(TEXT, edits=ji.compose(double, zero), capture="blocks.3.attn.head_out")
    np.testing.assert_array_equal(run["blocks.3.attn.head_out"], 0.0)


def test_site_patterns_and_edit_contract_errors(smollm2):
    with pytest.raises(ji.SiteError, match="blocks.99"):
        smollm2.run(TEXT, capture="blocks.99.attn.probs")
    with pytest.raises(ji.SiteError, match="matches no site"):
        smollm2.grad(lambda r: r.logits.sum(), TEXT, wrt="blocks.*.attn.nothing")
    with pytest.raises(ji.SiteError, match="ScaleHead"):
        smollm2(TEXT, edits=ji.ScaleHead(layer=30, head=0))
    bad = ji.FunctionEdit(patterns=("blocks.1.resid_post",), fn=lambda x, ctx, a: x[..., :5])
    with pytest.raises(ji.SiteError, match="must return shape"):
        smollm2(TEXT, edits=bad)
    assert set(smollm2.resolve_capture("blocks.1?.attn.probs")) == {f"blocks.1{i}.attn.probs" for i in range(10)}
