"""Segment-to-segment attention mass: how much the tokens of one segment read from another.

From Zhang et al., "From Redundancy to Relevance" (NAACL 2025), Algorithm B (spec
llava_cam_infoflow.md): with the head-averaged attention A of a layer, the mass that query
segment Q draws from key segment K is

    lambda(Q <- K) = mean over query tokens i in Q of sum over keys j in K of A[i, j]

(averaging over the query tokens is the spec's inferred reading). Segments are the input's
(system / image / question / answer / generated / ...), so nothing depends on offsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp

from jaxinterp.attention.spans import Span, span_mask

Array = jax.Array


def segment_mass(probs: Array, query_segments: Array, key_segments: Array, *, queries: Sequence[Span],
                 keys: Sequence[Span]) -> Array:
    """[B, len(queries), len(keys)] attention mass from each key span to each query span.

    Args:
      probs: [B, H, T, S] attention probabilities of one layer (averaged over heads here).
      query_segments: [B, T] segment ids of the queries; key_segments: [B, S] of the keys.
      queries, keys: spans (segment names or [start, stop) ranges).
    Returns NaN for a row without any token of a query span.
    """
    chex.assert_rank(probs, 4)
    chex.assert_rank([query_segments, key_segments], 2)
    mean = jnp.mean(probs.astype(jnp.float32), axis=1)  # [B, T, S]
    key_masks = jnp.stack([span_mask(k, key_segments) for k in keys], axis=1)  # [B, K, S]
    query_masks = jnp.stack([span_mask(q, query_segments) for q in queries], axis=1)  # [B, Q, T]
    per_query = jnp.einsum("bts,bks->btk", mean, key_masks.astype(jnp.float32))  # [B, T, K]
    total = jnp.einsum("bqt,btk->bqk", query_masks.astype(jnp.float32), per_query)
    count = jnp.sum(query_masks, axis=-1)[..., None]
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)
