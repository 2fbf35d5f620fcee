"""CBA, Contextual Background Attenuation (Diffusion-CAM, spec step 9).

theta = 0.15 P50(positive values) + 0.15 P60(all) + 0.2 mean(positive values) + 0.015 max
(1e-6 when no value is positive). Each pixel v < theta is scaled by f = clip(v / theta, 0, 1),
times 0.3 more when v < 0.2 theta, floored at 0.5: v <- v clip(f, 0.5, 1).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxinterp.attribution.ops import nonzero_percentile

Array = jax.Array


def background_threshold(m: Array, *, w_median: float = 0.15, w_p60: float = 0.15, w_mean: float = 0.2,
                         w_max: float = 0.015) -> Array:
    """theta of the reference's weights (its mean weight is 0.5 * 0.4, its max weight 0.3 * 0.05)."""
    positive = m > 0
    mean_positive = jnp.sum(jnp.where(positive, m, 0.0)) / jnp.maximum(jnp.sum(positive), 1)
    theta = (w_median * nonzero_percentile(m, 50) + w_p60 * jnp.percentile(m, 60) + w_mean * mean_positive
             + w_max * jnp.max(m))
    return jnp.where(jnp.any(positive), theta, 1e-6)


def attenuation(m: Array, theta: Array, *, very_low: float = 0.2, very_low_factor: float = 0.3,
                floor: float = 0.5) -> Array:
    """The factor each pixel is multiplied by (1 at and above theta)."""
    f = jnp.clip(m / jnp.maximum(theta, 1e-8), 0.0, 1.0)
    f = jnp.where(m < very_low * theta, f * very_low_factor, f)
    return jnp.where(m < theta, jnp.clip(f, floor, 1.0), 1.0)


def cba(m: Array, **weights) -> Array:
    """CBA on one [H, W] map (spec step 9); `weights` override `background_threshold`'s."""
    chex.assert_rank(m, 2)
    return m * attenuation(m, background_threshold(m, **weights))
