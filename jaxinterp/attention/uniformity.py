"""ART's m-index: how far each head's attention is from the uniform causal pattern.

Luo et al., "ART: Attention Replacement Technique to Improve Factuality in LLMs" (arXiv
2604.06393), Sec. 3.2 as released in `modify_attention.py` (spec art.md, step 2). With the
uniform reference U[i, j] = 1 / n_i (n_i the number of keys row i may attend: i + 1 in a causal
prefill, T for a single cached query row), the ratio R = A / U is folded so that shares below
the uniform one count as much as shares above it, f(R) = 1 / R for eps < R < 1 else R, and

    m_h = sum over visible (i, j) of f(R[i, j]) / (number of visible (i, j))

which is T (T + 1) / 2 pairs in a causal prefill and T for one row, as in the code. m = 1 for a
perfectly uniform head; it grows as the head concentrates: low m = uniform, high m = local.
Masked cells are excluded explicitly through `visible` (the code relies on R <= eps for them).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxinterp.errors import ArgumentError

Array = jax.Array
BELOW_EPS = ("drop", "clamp")


def m_index(probs: Array, visible: Array, *, eps: Array | float = 1e-6, below_eps: str = "drop") -> Array:
    """[B, H] m-index of each head over the visible cells (see the module docstring).

    Args:
      probs: [B, H, T, S] attention probabilities.
      visible: [B, T, S] or [B, H, T, S] bool, the cells that count (keys the row may attend,
        restricted to the query rows of interest).
      eps: ratios at or below eps are not folded (code: 1e-6).
      below_eps: `drop` (the released code): such a cell adds its tiny R, so a head whose other
        cells underflow (an exact one-hot row) scores about 1 like a uniform one; `clamp`
        counts it as 1 / eps instead, which keeps the index monotone in concentration.
    """
    chex.assert_rank(probs, 4)
    if below_eps not in BELOW_EPS:
        raise ArgumentError(f"below_eps: expected one of {BELOW_EPS}, found {below_eps!r}")
    visible = jnp.broadcast_to(visible[:, None] if visible.ndim == 3 else visible, probs.shape)
    count = jnp.sum(visible, axis=-1, keepdims=True)
    ratio = probs.astype(jnp.float32) * count
    folded = jnp.where((ratio < 1) & (ratio > eps), 1.0 / jnp.where(ratio > eps, ratio, 1.0), ratio)
    if below_eps == "clamp":
        folded = jnp.where(ratio <= eps, 1.0 / eps, folded)
    total = jnp.sum(jnp.where(visible, folded, 0.0), axis=(-2, -1))
    return total / jnp.maximum(jnp.sum(visible, axis=(-2, -1)), 1)
