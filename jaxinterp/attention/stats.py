"""Statistics of attention patterns.

Normalised entropy of a query row: H / log(n), with n the number of keys the row may
attend, so 1 means uniform over the visible keys and 0 a one-hot row. Rows that see a
single key carry no information (0/0) and are left out of averages.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxinterp.models import Batch
from jaxinterp.models.masks import attention_mask

Array = jax.Array


def visible_keys(batch: Batch, *, causal: bool = True, window: int | None = None) -> Array:
    """[B, T, T] bool: which keys each query of a full (uncached) forward may attend."""
    slots = jnp.arange(batch.tokens.shape[1])
    allowed = attention_mask(
        query_slots=slots, key_slots=slots, query_positions=batch.positions, key_positions=batch.positions,
        key_mask=batch.mask, causal=causal, window=window,
    )
    return allowed[:, 0] & batch.mask[:, :, None]


def normalised_entropy(probs: Array, visible: Array) -> Array:
    """Per-head normalised entropy averaged over the query rows that see at least two keys.

    Args:
      probs: [B, H, T, S] attention probabilities (a captured `attn.probs`).
      visible: [B, T, S] bool, the keys each query may attend (`visible_keys`).
    Returns:
      [H] float32, averaged over batch and eligible rows.
    """
    probs = probs.astype(jnp.float32)
    count = jnp.sum(visible, axis=-1)  # [B, T]
    plogp = jnp.where(visible[:, None] & (probs > 0), probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0)
    entropy = -jnp.sum(plogp, axis=-1) / jnp.log(jnp.maximum(count, 2))[:, None]  # [B, H, T]
    eligible = (count >= 2)[:, None, :]
    return jnp.sum(jnp.where(eligible, entropy, 0.0), axis=(0, 2)) / jnp.maximum(jnp.sum(eligible), 1)
