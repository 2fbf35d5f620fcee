"""AKD, Adaptive Kernel Denoising (Diffusion-CAM, spec step 7).

The map, plus tiny Gaussian noise N(0, (noise * max)^2) that breaks ties, goes through the
rank Gaussian filter with a kernel that grows with the number of denoising steps, the map's
spread and its height:
k = int(base * min(int(1 / step_ratio) / 16, 2) * min(5 std(M), 2) * min(H / 512, 1.5)),
made odd, clipped to [3, 11]. With the reference's step_ratio 0.5 and a grid of a few dozen
rows k is the floor, 3.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxinterp.attribution.ops import rank_gaussian_filter

Array = jax.Array
KERNELS = (3, 5, 7, 9, 11)  # the odd sizes the clip allows


def kernel_size(std: Array, *, step_ratio: float, height: int, base: int = 3) -> Array:
    """The adaptive odd kernel side (int32 scalar) for a map of this std and height."""
    step_factor = min(int(1 / step_ratio) / 16, 2.0)
    size_factor = min(height / 512, 1.5)
    k = jnp.floor(base * step_factor * jnp.minimum(5 * std, 2.0) * size_factor).astype(jnp.int32)
    k = k + (k % 2 == 0)
    return jnp.clip(k, KERNELS[0], KERNELS[-1])


def akd(m: Array, key: Array, *, step_ratio: float = 0.5, noise: float = 1e-6, base: int = 3) -> Array:
    """AKD on one [H, W] map (spec step 7).

    Args:
      m: the min-max normalised base map.
      key: PRNG key of the tie-breaking noise.
      step_ratio: denoising steps per generated token (the reference's generation: 0.5).
      noise: the noise's std relative to the map's max (reference 1e-6; 0 switches it off).
      base: the base kernel side (reference 3).
    """
    chex.assert_rank(m, 2)
    k = kernel_size(jnp.std(m), step_ratio=step_ratio, height=m.shape[0], base=base)
    top = jnp.max(m)
    noisy = m + jnp.where(top > 0, noise * top, 0.0) * jax.random.normal(key, m.shape)
    branches = [lambda x, size=size: rank_gaussian_filter(x, size) for size in KERNELS]
    return jax.lax.switch((k - KERNELS[0]) // 2, branches, noisy)
