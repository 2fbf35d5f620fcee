"""Array operations on 2-D attribution maps, in JAX: normalisation, percentiles of the nonzero
values, the rank Gaussian filter, a small Gaussian kernel and bilinear resizing.

All work on the trailing two axes (or a trailing flat axis) and broadcast over leading ones.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
EPS = 1e-8  # the reference code's guard in min-max normalisation


def minmax(x: Array, axes: tuple[int, ...] = (-2, -1)) -> Array:
    """(x - min) / (max - min + 1e-8) over `axes`: a map in [0, 1]."""
    low = jnp.min(x, axis=axes, keepdims=True)
    return (x - low) / (jnp.max(x, axis=axes, keepdims=True) - low + EPS)


def max_normalise(x: Array, axes: tuple[int, ...] = (-2, -1)) -> Array:
    """x / max over `axes` (LLaVA-CAM's CAM /= max(CAM)); an all-zero map stays zero."""
    return x / jnp.maximum(jnp.max(x, axis=axes, keepdims=True), EPS)


def nonzero_percentile(x: Array, q: float | Array) -> Array:
    """numpy's linear-interpolation percentile `q` of the positive entries of a map (NaN when none)."""
    return jnp.nanpercentile(jnp.where(x > 0, x, jnp.nan).reshape(-1), q)


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """[size] normalised 1-D Gaussian weights, as OpenCV's getGaussianKernel for an explicit sigma."""
    r = np.arange(size) - (size - 1) / 2
    w = np.exp(-(r ** 2) / (2 * sigma ** 2))
    return (w / w.sum()).astype(np.float32)


def windows(x: Array, k: int) -> Array:
    """[H, W, k*k] the k x k neighbourhood of each pixel of [H, W], borders reflected (numpy's
    `reflect`, OpenCV's BORDER_REFLECT_101), in raster order."""
    chex.assert_rank(x, 2)
    pad = k // 2
    padded = jnp.pad(x, pad, mode="reflect")
    height, width = x.shape
    return jnp.stack([padded[dy:dy + height, dx:dx + width] for dy in range(k) for dx in range(k)], axis=-1)


def rank_gaussian_filter(x: Array, k: int, min_sigma: float = 1e-6) -> Array:
    """TAM's rank Gaussian filter (Li et al., ICCV 2025, sec. 3.3; Diffusion-CAM AKD, spec step 7).

    Each pixel's k x k window, sorted ascending (s_1..s_{k^2}), is averaged with weights
    w_r = exp(-(r - k^2//2)^2 / (2 sigma^2)), sigma = std/mean of the window (its coefficient
    of variation), normalised; windows with mean <= 0 give 0. A constant window (sigma = 0,
    where the reference divides by zero) takes the limit sigma -> 0: its median; `min_sigma`
    is that floor.
    """
    chex.assert_rank(x, 2)
    ranked = jnp.sort(windows(x.astype(jnp.float32), k), axis=-1)
    mean = ranked.mean(axis=-1, keepdims=True)
    sigma = jnp.maximum(ranked.std(axis=-1, keepdims=True) / jnp.where(mean > 0, mean, 1.0), min_sigma)
    r = jnp.arange(k * k) - k * k // 2
    weights = jnp.exp(-(r ** 2) / (2 * sigma ** 2))
    value = jnp.sum(weights * ranked, axis=-1) / jnp.sum(weights, axis=-1)
    return jnp.where(mean[..., 0] > 0, value, 0.0)


def upsample(maps: Array, size: tuple[int, int]) -> Array:
    """Bilinear resize of [..., rows, cols] maps to [..., H, W] (half-pixel centres, as cv2.INTER_LINEAR)."""
    return jax.image.resize(maps, (*maps.shape[:-2], *size), method="linear", antialias=False)
