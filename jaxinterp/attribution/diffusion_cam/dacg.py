"""DACG, Distribution-Aware Confidence Gating (Diffusion-CAM, spec step 8).

The map's mean and std choose a percentile of its positive values: std > delta_sigma -> 90th;
else mean > delta_mu -> 75th; else mean < delta_mu' -> 80th; else 85th. Pixels at or below
tau = max(percentile, 1e-6) are low-confidence and, as the paper describes, get a light 1-D
Gaussian blur; high-confidence pixels are kept. The released code hands the vector of
low-confidence values to `cv2.GaussianBlur` with a (3, 1) kernel, so OpenCV sees an n x 1
image and blurs along its single column's width: the values come back unchanged. The
default `blur_sigma=None` reproduces that code, which made the paper's figures;
`blur_sigma=0.3` gives the described blur (kernel 3, sigma 0.3, along the low-confidence
values in raster order, ends reflected).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxinterp.attribution.ops import gaussian_kernel, nonzero_percentile

Array = jax.Array
TAU_FLOOR = 1e-6


def gate_percentile(mean: Array, std: Array, *, delta_sigma: float = 0.22, delta_mu: float = 0.35,
                    delta_mu_low: float = 0.25, high_var: float = 90, high_mean: float = 75, low_mean: float = 80,
                    default: float = 85) -> Array:
    """The percentile of the positive values that gates confidence (reference thresholds and percentiles)."""
    return jnp.where(std > delta_sigma, high_var,
                     jnp.where(mean > delta_mu, high_mean, jnp.where(mean < delta_mu_low, low_mean, default)))


def threshold(m: Array, **gating) -> Array:
    """tau = max(percentile of the positive values, 1e-6) (1e-6 for an all-zero map)."""
    q = gate_percentile(jnp.mean(m), jnp.std(m), **gating)
    return jnp.maximum(jnp.nan_to_num(nonzero_percentile(m, q), nan=TAU_FLOOR), TAU_FLOOR)


def blur_selected(m: Array, selected: Array, sigma: float) -> Array:
    """A 3-tap Gaussian blur of the selected values of `m`, in raster order as one vector (reflected ends)."""
    flat, chosen = m.reshape(-1), selected.reshape(-1)
    order = jnp.argsort(~chosen, stable=True)  # the selected positions first, in raster order
    count = jnp.sum(chosen)
    values = flat[order]
    index = jnp.arange(flat.shape[0])
    prev = values[jnp.where(index == 0, jnp.minimum(1, count - 1), index - 1)]
    next_ = values[jnp.where(index >= count - 1, jnp.maximum(count - 2, 0), index + 1)]
    w = gaussian_kernel(3, sigma)
    blurred = jnp.where(index < count, w[0] * prev + w[1] * values + w[2] * next_, values)
    return flat.at[order].set(blurred).reshape(m.shape)


def dacg(m: Array, *, blur_sigma: float | None = None, **gating) -> Array:
    """DACG on one [H, W] map (spec step 8); `gating` overrides `gate_percentile`'s thresholds."""
    chex.assert_rank(m, 2)
    if blur_sigma is None:
        return m
    return blur_selected(m, m <= threshold(m, **gating), blur_sigma)
