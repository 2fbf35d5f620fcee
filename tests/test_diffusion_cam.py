"""Diffusion-CAM: each refinement module against a numpy transcription of the spec on fixed maps,
the structurally valid step selection on a sampled tiny diffusion MLLM, and the method end to end."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

import jaxinterp as ji
from jaxinterp.attribution import attribute
from jaxinterp.attribution import diffusion_cam as dc
from jaxinterp.attribution.ops import rank_gaussian_filter
from jaxinterp.diffusion import sample
from jaxinterp.models import make_batch
from tests.attribution_tiny import GRID, PATCHES, vlm

RNG = np.random.default_rng(0)
MAP = RNG.random((9, 9)).astype(np.float32) ** 2


def np_rank_gaussian(img, k):
    """TAM's numpy loop (the reference the spec cites)."""
    out, pad = np.zeros_like(img), k // 2
    padded = np.pad(img, pad, mode="reflect")
    ax = np.arange(k * k) - k * k // 2
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            window = np.sort(padded[i:i + k, j:j + k].ravel())
            mean = window.mean()
            if mean > 0:
                kernel = np.exp(-(ax ** 2) / (2 * (window.std() / mean) ** 2))
                out[i, j] = (window * kernel / kernel.sum()).sum()
    return out


def np_kernel_size(step_ratio, std, height):
    k = int(3 * min(int(1 / step_ratio) / 16, 2.0) * min(std * 5, 2.0) * min(height / 512, 1.5))
    k += k % 2 == 0
    return max(3, min(k, 11))


def np_dacg_threshold(m):
    mean, std, positive = m.mean(), m.std(), m[m > 0]
    q = 90 if std > 0.22 else 75 if mean > 0.35 else 80 if mean < 0.25 else 85
    return max(np.percentile(positive, q), 1e-6), q


def np_cba(m):
    positive = m[m > 0]
    theta = 0.15 * np.percentile(positive, 50) + 0.15 * np.percentile(m, 60) + 0.5 * 0.4 * positive.mean() + 0.3 * m.max() * 0.05
    out = m.copy()
    bg = m < theta
    f = np.clip(m[bg] / theta, 0, 1)
    f[m[bg] < 0.2 * theta] *= 0.3
    out[bg] = m[bg] * np.clip(f, 0.5, 1.0)
    return out


def np_sicd(m, tokens):
    counts = {t: tokens.count(t) for t in tokens}
    i = np.zeros_like(m) + (0.05 * sum(c > 1 for c in counts.values()) / len(tokens))
    i[m > m.mean() + 2 * m.std()] += 0.02
    if i.max() == 0:
        return m
    s = min(minimize_scalar(lambda x: np.sum((m - i * x) ** 2)).x, 0.5)
    out = np.maximum(m - i * s, 0)
    return m if np.ptp(out) < 0.9 * np.ptp(m) else out


@pytest.mark.parametrize("k", [3, 5])
def test_rank_gaussian_filter_matches_tam_on_a_9x9_map(k):
    np.testing.assert_allclose(rank_gaussian_filter(jnp.asarray(MAP), k), np_rank_gaussian(MAP, k), rtol=1e-5, atol=1e-6)
    constant = np.full((9, 9), 0.3, np.float32)  # the reference divides by std = 0 here; the limit is the median
    np.testing.assert_allclose(rank_gaussian_filter(jnp.asarray(constant), k), constant, rtol=1e-6)


def test_akd_kernel_and_filter():
    for step_ratio, std, height in [(0.5, 0.3, 24), (1 / 64, 0.3, 512), (1 / 32, 0.1, 700), (1 / 64, 0.05, 300)]:
        assert int(dc.kernel_size(jnp.float32(std), step_ratio=step_ratio, height=height)) == np_kernel_size(
            step_ratio, std, height)
    filtered = dc.akd(jnp.asarray(MAP), jax.random.key(0), noise=0.0)
    np.testing.assert_allclose(filtered, np_rank_gaussian(MAP, 3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("low, high, percentile", [(0.0, 1.0, 90), (0.3, 0.7, 75), (0.0, 0.2, 80), (0.22, 0.4, 85)])
def test_dacg_gating_thresholds_and_blur(low, high, percentile):
    m = np.where(RNG.random((9, 9)) < 0.5, low, high).astype(np.float32) if percentile == 90 else (
        RNG.uniform(low, high, (9, 9)).astype(np.float32))
    tau, q = np_dacg_threshold(m)
    assert q == percentile
    np.testing.assert_allclose(dc.threshold(jnp.asarray(m)), tau, rtol=1e-6)
    w = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 0.3 ** 2))
    w /= w.sum()
    low_values = m[m <= tau]
    padded = np.pad(low_values, 1, mode="reflect")
    expected = m.copy()
    expected[m <= tau] = w[0] * padded[:-2] + w[1] * padded[1:-1] + w[2] * padded[2:]
    np.testing.assert_allclose(dc.dacg(jnp.asarray(m), blur_sigma=0.3), expected, rtol=1e-6)
    np.testing.assert_array_equal(dc.dacg(jnp.asarray(m)), m)  # default: the released code's no-op blur


def test_cba_attenuation_factors():
    m = MAP / MAP.max()
    np.testing.assert_allclose(dc.cba(jnp.asarray(m)), np_cba(m), rtol=1e-5, atol=1e-7)
    theta = 0.5
    factors = dc.attenuation(jnp.asarray([0.05, 0.09, 0.25, 0.4, 0.5, 0.9]), jnp.float32(theta))
    # v < 0.2 theta: (v/theta) * 0.3 floored at 0.5; below theta: v/theta floored at 0.5; above: 1
    np.testing.assert_allclose(factors, [0.5, 0.5, 0.5, 0.8, 1.0, 1.0], rtol=1e-6)


def test_sicd_least_squares_debias_and_revert_rule():
    tokens = [5, 7, 5, 9, 7, 7, 3, 3]  # three ids repeat: ratio 3/8
    ratio = dc.repeat_ratio(jnp.asarray(tokens + [5, 5]), jnp.asarray([True] * 8 + [False] * 2))
    np.testing.assert_allclose(ratio, 3 / 8)
    smooth = np.linspace(0.2, 1.0, 81, dtype=np.float32).reshape(9, 9)  # the debias keeps >= 90% of the range
    spiky = np.full((9, 9), 0.5, np.float32)
    spiky[4, 4] = 0.55  # the only outlier: removing its bump shrinks the small range by 20%, so SICD reverts
    for m in (smooth, MAP / MAP.max(), spiky):
        np.testing.assert_allclose(dc.sicd(jnp.asarray(m), ratio), np_sicd(m, tokens), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np_sicd(smooth, tokens), smooth) and np.array_equal(np_sicd(spiky, tokens), spiky)
    np.testing.assert_array_equal(dc.sicd(jnp.asarray(smooth * 0 + 0.5), jnp.float32(0.0)), smooth * 0 + 0.5)


def minmax_np(x):
    return (x - x.min()) / (x.max() - x.min() + 1e-8)


def test_refine_modes():
    m = jnp.asarray(MAP / MAP.max())
    key, ratio = jax.random.key(0), jnp.float32(0.25)
    baseline = dc.refine(m, key, ratio, modules=(), baseline_threshold=0.4, step_ratio=0.5)
    np.testing.assert_array_equal(baseline, np.where(MAP / MAP.max() < 0.4, 0, MAP / MAP.max()))
    for blur in (None, 0.3):  # the released code's no-op blur (default) and the paper's described one
        full = dc.refine(m, key, ratio, modules=dc.MODULES, baseline_threshold=0.4, step_ratio=0.5, dacg_blur=blur)
        x = np_cba(np.asarray(dc.dacg(jnp.asarray(np_rank_gaussian(np.asarray(m), 3)), blur_sigma=blur)))
        x = minmax_np(np.clip(x, 0, float(m.max())))
        np.testing.assert_allclose(full, np_sicd(x, [1, 2, 1, 3]), atol=1e-4)  # AKD's 1e-6 tie-break noise aside
    default = dc.refine(m, key, ratio, modules=("dacg",), baseline_threshold=0.4, step_ratio=0.5)
    np.testing.assert_allclose(default, minmax_np(np.asarray(m)), atol=1e-6)  # DACG alone changes nothing


@pytest.fixture(scope="module")
def diffusion_vlm():
    return vlm(causal=False)


@pytest.fixture(scope="module")
def sampled(diffusion_vlm):
    image_id = diffusion_vlm.config.image_token_id
    tokens = np.array([[2, 8, 9] + [image_id] * PATCHES + [10, 11]] * 2, np.int32)
    pixels = np.random.default_rng(1).normal(size=(2, 1, 3, 16, 16)).astype(np.float32)
    return sample(diffusion_vlm, make_batch(tokens, pixels=pixels), gen_length=4, steps=4, block_length=4)


def test_structurally_valid_step_selection(diffusion_vlm, sampled):
    mask_id = diffusion_vlm.config.mask_token_id
    for index in range(4):
        decided = dc.step_batch(diffusion_vlm, sampled, 1, answer_index=index)
        answer = np.asarray(decided.tokens[0, -4:])
        assert answer[index] == mask_id  # the decision's own input: the token is still masked
        assert int(jnp.sum(decided.tokens == diffusion_vlm.config.image_token_id)) == PATCHES
    final = dc.step_batch(diffusion_vlm, sampled, 0, step="final")
    np.testing.assert_array_equal(final.tokens[0, -4:], sampled.history[-1, 0])
    np.testing.assert_array_equal(dc.step_batch(diffusion_vlm, sampled, 0, step=0).tokens[0, -4:], [mask_id] * 4)
    with pytest.raises(ji.ArgumentError, match="step: expected one of"):
        dc.step_batch(diffusion_vlm, sampled, 0, step="middle")
    cut = sampled.prompt.replace(tokens=sampled.prompt.tokens.at[:, 5].set(2))
    with pytest.raises(ji.ArgumentError, match="not structurally valid: its sequence holds 15 of the 16 image tokens"):
        dc.step_batch(diffusion_vlm, type(sampled)(**{**vars(sampled), "prompt": cut}), 0)


def test_diffusion_cam_end_to_end_and_ablations(diffusion_vlm, sampled):
    batch = dc.step_batch(diffusion_vlm, sampled, 0, step="final")
    target = dc.contrast_target(diffusion_vlm, batch)
    assert tuple(np.asarray(target.positions[0]) - batch.tokens.shape[1]) in {(-3, -4), (-4, -5)}
    for modules in [(), dc.MODULES]:  # each module alone is checked above
        out = attribute(diffusion_vlm, batch, method="diffusion_cam", modules=modules)
        assert out.sites == ("blocks.0.resid_post",) and out.image.shape == (1, 1, 1, GRID, GRID)
        assert 0 <= float(out.image.min()) and float(out.image.max()) <= 1 + 1e-6
    blurred = attribute(diffusion_vlm, batch, method="diffusion_cam", modules=("dacg",), dacg_blur=0.3)
    assert np.abs(np.asarray(blurred.image) - np.asarray(
        attribute(diffusion_vlm, batch, method="diffusion_cam", modules=("dacg",)).image)).max() > 1e-4
    whole = attribute(diffusion_vlm, batch, target, method="diffusion_cam")
    np.testing.assert_allclose(whole.image, out.image, atol=1e-6)  # the default target is this contrast
    with pytest.raises(ji.ArgumentError, match="modules"):
        attribute(diffusion_vlm, batch, method="diffusion_cam", modules=("gauss",))
