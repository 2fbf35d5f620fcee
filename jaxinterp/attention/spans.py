"""Token spans of the attention statistics: a segment name, or an explicit [start, stop) range.

A segment name (`"image"`, `"question"`, ...) selects the tokens labelled so in the input, which
is how methods find their spans: from data, never from hard-coded offsets. An explicit range is
for ad-hoc analysis of a known sequence and must lie inside it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.attention.checks import check_segment
from jaxinterp.errors import ArgumentError
from jaxinterp.models.sites import segment_id

Array = jax.Array
Span = str | tuple[int, int]


def span_mask(span: Span, segments: Array) -> Array:
    """[B, S] bool: the tokens of `span` among tokens with segment ids `segments` [B, S]."""
    length = segments.shape[-1]
    if isinstance(span, str):
        return segments == segment_id(check_segment(span))
    start, stop = span
    if not 0 <= start < stop <= length:
        raise ArgumentError(f"span: [{start}, {stop}) lies outside the sequence of {length} tokens")
    inside = (jnp.arange(length) >= start) & (jnp.arange(length) < stop)
    return jnp.broadcast_to(inside, segments.shape)


def require_tokens(span: Span, segments: Array) -> Array:
    """`span_mask`, requiring every row to hold at least one token of the span (concrete inputs)."""
    mask = span_mask(span, segments)
    empty = np.flatnonzero(~np.asarray(jnp.any(mask, axis=-1)))
    if empty.size:
        raise ArgumentError(f"span {span!r}: no token of row(s) {empty.tolist()[:8]} belongs to it "
                            "(label the tokens with their segment, e.g. through jaxinterp.multimodal.encode)")
    return mask
