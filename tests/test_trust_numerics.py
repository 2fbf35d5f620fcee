"""Numerical guards: float32 where precision matters in bf16 runs, NaN/inf located by site, finite
gradients on saturated models, and bit-identical results across processes on CPU."""

from __future__ import annotations

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import models
from jaxinterp.models import make_batch
from tests.isolated import finish, start_python

TOKENS = np.array([[3, 17, 42, 8, 91, 5, 60, 2]], np.int32)


@pytest.fixture(scope="module", params=["smol", "gpt2"])
def bf16_model(request, tiny_checkpoint):
    folder, _ = tiny_checkpoint(request.param)
    return ji.load(folder, dtype="bfloat16", progress=False)


def test_bf16_runs_keep_scores_probabilities_and_logits_in_float32(bf16_model):
    shapes = bf16_model.site_shapes(TOKENS)
    assert shapes["blocks.0.resid_pre"].dtype == jnp.bfloat16  # the model really runs in bf16
    assert shapes["blocks.0.attn.q"].dtype == jnp.bfloat16
    for name, shape in shapes.items():
        if name.endswith(("attn.scores", "attn.probs")) or name == "logits":
            assert shape.dtype == jnp.float32, name
    run = bf16_model.run(TOKENS, capture=["blocks.*.attn.probs"])
    assert run.logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(run["blocks.1.attn.probs"]).sum(-1), 1.0, atol=1e-6)


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for inner in jcore.jaxprs_in_params(eqn.params):
            yield from _equations(inner)


def test_bf16_softmax_and_norms_compute_in_float32(bf16_model):
    """Every exponential (softmax) and reciprocal square root (RMSNorm/LayerNorm) in the bf16
    forward reads float32 values, however the parameters are stored."""
    batch = make_batch(TOKENS)
    jaxpr = jax.make_jaxpr(lambda p, b: models.forward(bf16_model.config, p, b)[0].logits)(bf16_model.params, batch)
    found = {}
    for eqn in _equations(jaxpr.jaxpr):
        if eqn.primitive.name in ("exp", "rsqrt", "sqrt", "log"):
            found.setdefault(eqn.primitive.name, set()).update(str(v.aval.dtype) for v in eqn.invars)
    assert {"exp", "rsqrt"} <= set(found) and set().union(*found.values()) == {"float32"}, found


@pytest.fixture(scope="module")
def smol(tiny_checkpoint):
    folder, _ = tiny_checkpoint("smol")
    return ji.load(folder, progress=False)


def _poison(site: str, value: float) -> ji.FunctionEdit:
    """Writes `value` into one entry of `site`."""
    return ji.FunctionEdit((site,), lambda x, ctx, args: x.at[(0,) * x.ndim].set(value))


def test_check_finite_names_the_first_site_holding_nan_or_inf(smol):
    smol.run(TOKENS, check_finite=True)  # a clean forward passes
    for site, value in (("blocks.0.attn.q", np.nan), ("blocks.1.mlp.out", np.inf)):
        with pytest.raises(ji.NonFiniteError, match=f"forward: NaN or infinity first appears at site '{site}'"):
            smol.run(TOKENS, edits=_poison(site, value), check_finite=True)
    edit = _poison("blocks.0.attn.scores", np.nan)
    with pytest.raises(ji.NonFiniteError, match="forward: NaN or infinity first appears at site 'blocks.0.attn.scores'"):
        smol.grad(lambda run: run.logits[0, -1, 0], TOKENS, wrt=["blocks.0.resid_pre"], edits=edit, check_finite=True)
    assert not np.isfinite(np.asarray(smol(TOKENS, edits=edit))).all()  # off by default: NaNs just propagate


def test_check_finite_names_a_gradient_that_is_not_finite(smol):
    def objective(run):  # finite forward, infinite slope: d sqrt(x) / dx at 0
        return jnp.sqrt(jnp.maximum(run["blocks.1.resid_post"][0, 0, 0], 0.0) * 0.0)

    with pytest.raises(ji.NonFiniteError, match="gradient: NaN or infinity first appears at site 'blocks.1.resid_post'"):
        smol.grad(objective, TOKENS, wrt=["blocks.1.resid_post"], capture=["blocks.1.resid_post"], check_finite=True)


def test_check_finite_on_attribute_names_the_first_site(smol):
    attribution = pytest.importorskip("jaxinterp.attribution")
    with pytest.raises(ji.NonFiniteError, match="first appears at site 'blocks.1.mlp.out'"):
        attribution.attribute(smol, TOKENS, attribution.Tokens.at(7), method="grad_x_input",
                              edits=_poison("blocks.1.mlp.out", np.nan), check_finite=True)
    attribution.attribute(smol, TOKENS, attribution.Tokens.at(7), method="grad_x_input", check_finite=True)

    def infinite_slope(run):  # finite score, infinite gradient: d sqrt(x) / dx at 0
        return jnp.sqrt(jnp.maximum(run.logits[:, -1, 0], 0.0) * 0.0)

    with pytest.raises(ji.NonFiniteError, match="'grad_x_input': NaN or infinity in the tokens map of site 'embed'"):
        attribution.attribute(smol, TOKENS, attribution.Function(infinite_slope), method="grad_x_input",
                              check_finite=True)


def _saturated(model: ji.Model, scale: float) -> ji.Model:
    """The same model with its final norm scaled by `scale`: logits in the millions."""
    params = {**model.params, "final_norm": {"scale": model.params["final_norm"]["scale"] * scale}}
    return ji.Model(model.config, params, source="saturated")


def test_gradients_stay_finite_when_logits_saturate(tiny_checkpoint):
    folder, _ = tiny_checkpoint("smol")
    model = _saturated(ji.load(folder, progress=False), 1e5)
    logits = np.asarray(model(TOKENS))
    assert np.abs(logits).max() > 1e5 and np.isfinite(logits).all()

    def log_probability(run):
        return jax.nn.log_softmax(run.logits[0, -1])[7]

    value, grads = model.grad(log_probability, TOKENS, wrt=["blocks.*.resid_post", "embed"], check_finite=True)
    assert np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in grads.values())


def test_bf16_attribution_is_float32_and_finite_when_logits_saturate(tiny_checkpoint):
    attribution = pytest.importorskip("jaxinterp.attribution")
    folder, _ = tiny_checkpoint("smol")
    model = _saturated(ji.load(folder, dtype="bfloat16", progress=False), 1e5)
    for method, score, options in (("grad_x_input", "prob", {}), ("integrated_gradients", "logprob", {"steps": 4})):
        out = attribution.attribute(model, TOKENS, attribution.Tokens.at(7, score=score), method=method, **options)
        for name in ("values", "tokens"):
            array = getattr(out, name)
            assert array.dtype == jnp.float32 and np.isfinite(np.asarray(array)).all(), (method, score, name)


DETERMINISM = """
import jax.numpy as jnp, numpy as np, jaxinterp as ji
from jaxinterp.models import make_batch
model = ji.load({folder!r}, progress=False)
tokens = np.array({tokens}, np.int32)
logits = np.asarray(model(tokens))
generated = model.generate(make_batch(tokens), max_new_tokens=8, temperature=0.9, top_k=20, seed=7).tokens
ablated = ji.sweep(lambda batch, head: model(batch, edits=ji.ScaleHead(layer=1, head=head, scale=0.0))[:, -1],
                   model.batch(tokens), jnp.arange(4), progress=False)
np.savez({out!r}, logits=logits, generated=np.array(generated), ablated=np.asarray(ablated))
"""


def test_the_same_call_is_bit_identical_across_processes_on_cpu(tmp_path, tiny_checkpoint):
    folder, _ = tiny_checkpoint("smol")
    outputs = [tmp_path / f"{i}.npz" for i in range(2)]
    for child in [start_python(DETERMINISM.format(folder=folder, tokens=TOKENS.tolist(), out=str(out))) for out in outputs]:
        finish(child)
    first, second = (np.load(out) for out in outputs)
    for key in ("logits", "generated", "ablated"):
        assert first[key].tobytes() == second[key].tobytes(), key
    assert len(set(map(tuple, first["generated"]))) >= 1 and first["ablated"].shape[0] == 4
