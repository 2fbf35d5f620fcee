"""Attribution methods: closed forms, completeness, a planted signal, one batched program, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import models
from jaxinterp.attention import attention_rollout
from jaxinterp.attribution import Function, Tokens, attribute, batching, gradcam
from jaxinterp.attribution.ops import max_normalise
from jaxinterp.attribution.regions import image_features
from jaxinterp.attribution.tam import eci
from jaxinterp.models import segment_id
from tests.attribution_tiny import GRID, image_batch, planted, text_lm, vlm

SITE = "blocks.1.resid_mid"


@pytest.fixture(scope="module")
def model():
    return vlm()


@pytest.fixture(scope="module")
def batch(model):
    return image_batch(model, rows=2)


def _image_rows(model, batch, x):
    """[B, 16, D] rows of the image tokens of a decoder site."""
    return np.asarray(image_features(model.config, batch, SITE, jnp.asarray(x))).reshape(x.shape[0], GRID * GRID, -1)


def test_grad_cams_equal_their_closed_forms_on_a_linear_readout(model, batch):
    """f = sum(W * x) read at the site: dG/dx = W exactly, so each CAM has a closed form in F and W."""
    shape = model.site_shapes(batch)[SITE].shape
    w = np.asarray(jax.random.normal(jax.random.key(1), shape))
    target = Function(lambda run: jnp.sum(run.captured[SITE] * w, axis=(1, 2)))
    f = _image_rows(model, batch, np.asarray(model.run(batch, capture=[SITE])[SITE]))
    g = _image_rows(model, batch, w)
    a = g.mean(axis=1, keepdims=True)
    expected = {"grad_cam": np.maximum((f * a).sum(-1), 0)}
    alpha = g ** 2 / (2 * g ** 2 + f.sum(axis=1, keepdims=True) * g ** 3)
    expected["grad_cam_pp"] = np.maximum((f * (alpha * np.maximum(g, 0)).sum(axis=1, keepdims=True)).sum(-1), 0)
    llava = np.maximum((f * np.maximum(g, 0).mean(axis=1, keepdims=True)).mean(-1), 0)
    llava /= llava.max(axis=1, keepdims=True)
    expected["llava_cam"] = np.where(llava >= 0.5, llava, 0)
    for method, closed_form in expected.items():
        out = attribute(model, batch, target, method=method, site=SITE)
        assert out.image.shape == (1, 2, 1, GRID, GRID) and out.sites == (SITE,)
        np.testing.assert_allclose(np.asarray(out.image).reshape(2, -1), closed_form, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out.values, (np.asarray(model.run(batch, capture=[SITE])[SITE]) * w).sum((1, 2)),
                                   rtol=1e-5)


def test_integrated_gradients_are_complete():
    """sum_t A[t] = f(x) - f(x') along the path from a token embedding x' (a zero baseline would cross
    the normalisations' singularity at 0, where f jumps)."""
    lm = text_lm()
    tokens = np.random.default_rng(0).integers(0, 64, (2, 12)).astype(np.int32)
    target, baseline = Tokens.at(11), lm.params["embed"][0]
    out = attribute(lm, tokens, target, method="integrated_gradients", steps=64, baseline=baseline)
    assert out.tokens.shape == (1, 2, 12) and out.image is None
    to_baseline = ji.FunctionEdit(patterns=("embed",), fn=lambda x, ctx, b: jnp.broadcast_to(b, x.shape), args=baseline)
    at_baseline = lm.run(tokens, edits=to_baseline).logits[jnp.arange(2), 10, tokens[:, 11]]
    np.testing.assert_allclose(out.tokens[0].sum(-1), out.values - at_baseline, atol=1e-3)
    gxi = attribute(lm, tokens, target, method="grad_x_input", site=["embed", "blocks.*.resid_post"])
    assert gxi.tokens.shape == (3, 2, 12) and gxi.sites == ("embed", "blocks.0.resid_post", "blocks.1.resid_post")


def test_every_method_finds_a_planted_patch(model):
    batch, patch = image_batch(model), 9
    edits = planted(model, batch, patch)
    last = batch.tokens.shape[1] - 1
    token = int(batch.tokens[0, last])
    # explain the direction in which the planted patch raises the score (Grad-CAM keeps positive evidence only)
    sign = jnp.sign(attribute(model, batch, Tokens.at(last), method="grad_x_input", site="projector.out",
                              edits=edits).image[0, 0, 0, patch // GRID, patch % GRID])
    target = Function(lambda run: sign * run.logits[:, last - 1, token])
    cases = [(m, "projector.out", {}) for m in ("grad_cam", "grad_cam_pp", "llava_cam", "grad_x_input")]
    cases += [("llava_cam", "projector.out", {"samples": 4}), ("diffusion_cam", "projector.out", {"modules": ()}),
              ("score_cam", "projector.out", {"channels": 8}), ("integrated_gradients", "embed", {"steps": 16}),
              ("grad_cam", "embed", {})]
    for method, site, options in cases:
        out = attribute(model, batch, target, method=method, site=site, edits=edits, **options)
        found = np.unravel_index(np.argmax(np.abs(np.asarray(out.image[0, 0, 0]))), (GRID, GRID))
        assert found == (patch // GRID, patch % GRID), (method, site, options)


def test_smooth_llava_cam_runs_as_one_batched_program(model, monkeypatch):
    batch = image_batch(model)
    traces, sweeps = [], []
    forward, sweep = models.forward, batching.sweep

    def counted(*args, **kwargs):
        traces.append(1)
        return forward(*args, **kwargs)

    def spied(fn, inputs, variations, **kwargs):
        before = len(traces)
        out = sweep(fn, inputs, variations, **kwargs)
        sweeps.append((variations.shape[0], kwargs["chunk_size"], len(traces) - before))
        return out

    monkeypatch.setattr(models, "forward", counted)
    monkeypatch.setattr(batching, "sweep", spied)
    out = attribute(model, batch, method="llava_cam", samples=8, chunk_size=8, seed=3)
    assert sweeps == [(8, 8, 1)]  # 8 noisy copies in one chunk of one vmapped program, its forward traced once
    monkeypatch.undo()
    noise = jax.random.normal(jax.random.key(3), (8, *batch.pixels.shape))
    noise = noise * gradcam.pixel_noise_scale(model, 3, 0.1)
    loop = [attribute(model, batch.replace(pixels=batch.pixels + n), method="llava_cam").image for n in noise]
    # f32 through the norm's backward: the vmapped and looped programs round apart by ~2e-4 of the max
    np.testing.assert_allclose(out.image, max_normalise(jnp.mean(jnp.stack(loop), axis=0)), atol=1e-3)


def test_every_layer_comes_from_one_pass_and_equals_single_sites(model, batch):
    every = attribute(model, batch, method="llava_cam")
    assert every.sites == ("blocks.0.mlp.in", "blocks.1.mlp.in")
    for i, site in enumerate(every.sites):
        np.testing.assert_allclose(every.image[i], attribute(model, batch, method="llava_cam", site=site).image[0],
                                   atol=1e-6)
    tokens = attribute(model, batch, method="grad_cam", region="tokens")
    assert tokens.tokens.shape == (2, 2, batch.tokens.shape[1]) and tokens.image is None


def test_llava_cam_hooks_the_post_attention_norm_output(model, batch):
    """The paper hooks each layer's post-attention norm output: `mlp.in` = RMSNorm(resid_mid) * scale,
    checked by hand, whose per-token rescale gives other maps than its input `resid_mid` (the old default,
    kept as `site="blocks.*.resid_mid"`)."""
    run = model.run(batch, capture=["blocks.1.resid_mid", "blocks.1.mlp.in"])
    x = np.asarray(run["blocks.1.resid_mid"], np.float64)
    scale = np.asarray(model.params["text"]["blocks_1"]["mlp_norm"]["scale"])
    hand = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + model.config.text.rms_norm_eps) * scale
    np.testing.assert_allclose(run["blocks.1.mlp.in"], hand, rtol=1e-5, atol=1e-6)
    for method in ("llava_cam", "llava_cam_intensity"):
        default = attribute(model, batch, method=method)
        assert default.sites == ("blocks.0.mlp.in", "blocks.1.mlp.in"), method
        old = attribute(model, batch, method=method, site="blocks.*.resid_mid")
        assert old.sites == ("blocks.0.resid_mid", "blocks.1.resid_mid")
        assert np.abs(np.asarray(default.image) - np.asarray(old.image)).max() > 1e-3, method


def test_image_rows_follow_patch_coordinates(model, batch):
    run = model.run(batch, capture=["projector.out", "embed", "vision.blocks.1.resid_post"])
    at_embed = image_features(model.config, batch, "embed", run["embed"])
    np.testing.assert_allclose(at_embed, image_features(model.config, batch, "projector.out", run["projector.out"]))
    tower = image_features(model.config, batch, "vision.blocks.1.resid_post", run["vision.blocks.1.resid_post"])
    assert tower.shape == (2, 1, GRID, GRID, 32)
    np.testing.assert_allclose(tower[0, 0, 1, 2], run["vision.blocks.1.resid_post"][0, 1 * GRID + 2])


def test_tam_removes_interference_by_least_squares(model, batch):
    rng = np.random.default_rng(0)
    own, weights = rng.random((16, 5)), rng.random(5)
    signal = np.where(np.arange(16) == 3, 2.0, 0.0)
    interference = own @ (weights / weights.sum())
    image = signal + 0.7 * interference
    scale = image @ interference / (interference @ interference)
    np.testing.assert_allclose(eci(jnp.asarray(image), jnp.asarray(own), jnp.asarray(weights)),
                               np.maximum(image - scale * interference, 0), rtol=1e-5)
    out = attribute(model, batch, method="tam")
    assert out.image.shape == (1, 2, 1, GRID, GRID) and out.tokens.shape == (1, 2, batch.tokens.shape[1])
    assert 0 <= float(out.image.min()) and float(out.image.max()) <= 1 + 1e-6
    assert float(jnp.abs(out.tokens[0, :, 3:19]).max()) == 0  # image tokens carry no text score


def test_rollout_of_identity_attention_is_identity(model, batch):
    identity = ji.FunctionEdit(patterns=("blocks.*.attn.probs",),
                               fn=lambda x, ctx, args: jnp.broadcast_to(jnp.eye(x.shape[-1], dtype=x.dtype), x.shape))
    np.testing.assert_allclose(attention_rollout(model, batch, edits=identity), np.broadcast_to(np.eye(23), (2, 23, 23)))
    out = attribute(model, batch, Tokens.at(20), method="rollout", edits=identity, region="tokens")
    np.testing.assert_allclose(out.tokens[0], np.eye(23)[[19, 19]])  # the logits at 19 predict token 20
    mixed = attribute(model, batch, Tokens.at([21, 22]), method="rollout")
    assert mixed.image.shape == (1, 2, 1, GRID, GRID) and mixed.tokens.shape == (1, 2, 23)
    np.testing.assert_allclose(mixed.tokens[0].sum(-1), 1.0, rtol=1e-5)  # rollout rows are distributions


def test_bad_inputs_are_clear_errors(model, batch):
    with pytest.raises(ji.ArgumentError, match="position 99 is outside the sequence of 23 tokens"):
        attribute(model, batch, Tokens.at(99))
    with pytest.raises(ji.SiteError, match="site: pattern 'blocks.*.nothing' matches no site"):
        attribute(model, batch, site="blocks.*.nothing")
    with pytest.raises(ji.ArgumentError, match="llama model has no image span"):
        attribute(text_lm(), np.arange(8)[None], Tokens.at(7), region="image")
    with pytest.raises(ji.ArgumentError, match="carry no image"):
        attribute(model, batch.replace(pixels=None), region="image")
    with pytest.raises(ji.ArgumentError, match="method: expected one of"):
        attribute(model, batch, method="lrp")
    with pytest.raises(ji.ArgumentError, match=r"unknown option\(s\) \['samplez'\]"):
        attribute(model, batch, method="llava_cam", samplez=3)
    with pytest.raises(ji.ArgumentError, match="no answer tokens"):
        attribute(model, batch.replace(segments=jnp.zeros_like(batch.segments) + segment_id("question")))
    with pytest.raises(ji.ArgumentError, match="one site's path"):
        attribute(model, batch, method="integrated_gradients", site="blocks.*.resid_post")
