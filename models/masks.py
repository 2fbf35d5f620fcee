"""Attention masks, built in one place from data (slots, positions, validity).

A query may attend a key when the key holds a real token and, depending on the mode,
when the key's slot is not later than the query's (causal) and its position lies within
a window (sliding-window attention). Slots order the tokens as they were written to the
sequence or cache; positions are what the rotary/learned embeddings see. Methods that need
other masks (ART's local windows, DAPE-BR's patch distances, truncation) replace or edit
the scores through the `attn.scores` site.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

# Masked scores take this value rather than -inf, so that a row with no visible key (a
# padding query) stays finite: softmax of equal values is uniform, never NaN.
MASKED = float(jnp.finfo(jnp.float32).min)


def attention_mask(
    *,
    query_slots: Array,
    key_slots: Array,
    query_positions: Array,
    key_positions: Array,
    key_mask: Array,
    causal: bool,
    window: int | None = None,
) -> Array:
    """Boolean [B, 1, T, S] mask: True where query t may attend key s.

    Args:
      query_slots: [T] slot index of each query; key_slots: [S] slot index of each key.
      query_positions: [B, T]; key_positions: [B, S] absolute positions.
      key_mask: [B, S] True for keys that hold real tokens.
      causal: forbid keys in later slots (False for bidirectional / masked-diffusion LMs).
      window: sliding window: a key is visible when `query_pos - key_pos < window`; for
        bidirectional attention when `|query_pos - key_pos| <= window` (both as in transformers).
    """
    allowed = key_mask[:, None, None, :]
    if causal:
        allowed = allowed & (key_slots[None, None, None, :] <= query_slots[None, None, :, None])
    if window is not None:
        distance = query_positions[:, None, :, None] - key_positions[:, None, None, :]
        inside = (distance < window) if causal else (jnp.abs(distance) <= window)
        allowed = allowed & inside
    return allowed


class Mask(NamedTuple):
    """A layer's boolean mask `allowed` [B, 1, T, S] with what its structure lets attention skip.

    `triangular` says the queries are their own keys in slot order and attention is causal
    (a forward without a cache): queries in slots [a, b) see no key at or after slot b, so
    the fused path never computes those scores.
    """

    allowed: Array
    triangular: bool = False


def apply_mask(scores: Array, allowed: Array) -> Array:
    """Scores with disallowed entries set to `MASKED`."""
    return jnp.where(allowed, scores, MASKED)
