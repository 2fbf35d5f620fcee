"""Per-head statistics of attention patterns: normalised entropy and ART's m-index, layer by layer.

Normalised entropy of a query row: H / log(n), with n the number of keys the row may
attend, so 1 means uniform over the visible keys and 0 a one-hot row. Rows that see a
single key carry no information (0/0) and are left out of averages. The m-index is ART's
uniformity score (`jaxinterp.attention.uniformity`): 1 for a uniform head, larger when local.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.attention.streaming import layer_patterns
from jaxinterp.attention.uniformity import m_index
from jaxinterp.edits import Edit

Array = jax.Array


def normalised_entropy(probs: Array, visible: Array) -> Array:
    """Per-head normalised entropy averaged over the query rows that see at least two keys.

    Args:
      probs: [B, H, T, S] attention probabilities (a captured `attn.probs`).
      visible: [B, T, S] or [B, H, T, S] bool, the keys each query may attend (`visible_keys`).
    Returns:
      [H] float32, averaged over batch and eligible rows.
    """
    chex.assert_rank(probs, 4)
    probs = probs.astype(jnp.float32)
    visible = jnp.broadcast_to(visible[:, None] if visible.ndim == 3 else visible, probs.shape)
    count = jnp.sum(visible, axis=-1)  # [B, H, T]
    plogp = jnp.where(visible & (probs > 0), probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0)
    entropy = -jnp.sum(plogp, axis=-1) / jnp.log(jnp.maximum(count, 2))  # [B, H, T]
    eligible = count >= 2
    return jnp.sum(jnp.where(eligible, entropy, 0.0), axis=(0, 2)) / jnp.maximum(jnp.sum(eligible, axis=(0, 2)), 1)


def head_statistics(model: Any, inputs: Any, *, layers: Iterable[int] | None = None, edits: Edit | tuple | None = (),
                    eps: float = 1e-6, below_eps: str = "drop") -> dict[str, np.ndarray]:
    """Normalised entropy and m-index of every head, streamed layer by layer.

    Returns `{"layers": [L], "entropy": [L, H], "m_index": [L, H]}` (the m-index averaged
    over the batch rows; `eps` and `below_eps` as in `m_index`).
    """
    found: dict[str, list] = {"layers": [], "entropy": [], "m_index": []}
    for pattern in layer_patterns(model, inputs, layers=layers, edits=edits):
        found["layers"].append(pattern.layer)
        found["entropy"].append(np.asarray(normalised_entropy(pattern.probs, pattern.visible)))
        found["m_index"].append(np.asarray(
            jnp.mean(m_index(pattern.probs, pattern.visible, eps=eps, below_eps=below_eps), axis=0)))
    return {name: np.asarray(values) for name, values in found.items()}
