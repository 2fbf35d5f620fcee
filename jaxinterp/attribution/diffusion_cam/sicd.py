"""SICD, Single-Instance Causal Debiasing (Diffusion-CAM, spec step 10; after TAM's ECI).

Within one image the interference map is I = 0.05 r everywhere (r: the share of distinct
generated token ids that occur more than once, over the number of generated tokens) plus
0.02 where M > mean + 2 std. The least-squares scale s* = <M, I> / <I, I>, capped at 0.5,
removes it: M' = max(M - s* I, 0). When that shrinks the map's range below 0.9 of the
original, M is kept (the revert rule); an all-zero I leaves M as is.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

Array = jax.Array


def repeat_ratio(tokens: Array, mask: Array) -> Array:
    """(# distinct ids among the real `tokens` [L] that occur more than once) / (# real tokens)."""
    same = (tokens[:, None] == tokens[None, :]) & mask[:, None] & mask[None, :]
    count = jnp.sum(same, axis=1)
    earlier = jnp.tril(jnp.ones(same.shape, bool), k=-1)  # [i, j]: j comes before i
    first = mask & ~jnp.any(same & earlier, axis=1)
    return jnp.sum(first & (count > 1)) / jnp.maximum(jnp.sum(mask), 1)


def interference(m: Array, ratio: Array, *, repeat_weight: float = 0.05, outlier_weight: float = 0.02,
                 outlier_std: float = 2.0) -> Array:
    """I: repeat_weight * ratio everywhere, plus outlier_weight where M > mean + outlier_std * std."""
    outliers = m > jnp.mean(m) + outlier_std * jnp.std(m)
    return repeat_weight * ratio + jnp.where(outliers, outlier_weight, 0.0)


def sicd(m: Array, ratio: Array, *, scale_cap: float = 0.5, keep_range: float = 0.9, **weights) -> Array:
    """SICD on one [H, W] map (spec step 10); `weights` override `interference`'s."""
    chex.assert_rank(m, 2)
    i = interference(m, ratio, **weights)
    energy = jnp.sum(i ** 2)
    scale = jnp.minimum(jnp.sum(m * i) / jnp.where(energy > 0, energy, 1.0), scale_cap)
    debiased = jnp.maximum(m - scale * i, 0.0)
    keep = (energy == 0) | (jnp.ptp(debiased) < keep_range * jnp.ptp(m))
    return jnp.where(keep, m, debiased)
