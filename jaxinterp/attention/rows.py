"""What an attention edit reads from its `Context`: visible keys, the rows it acts on, own keys.

Edits on `attn.probs` get the masked scores in `ctx.scores`; a key is visible exactly where
the softmax saw a score above the mask value, so every mask (causal, sliding window, padding,
a positional scheme's, a truncation's) is respected without rebuilding it.

`apply_at` says when an edit acts:
- `prefill`: in prefill and full forwards, never in a cached decode step; in a full forward
  only on query rows not labelled `generated`, i.e. the rows a prefill saw. A forward that
  recomputes a whole generation (the reference code's no-cache decoding) thus edits exactly
  what the cached prefill edited, so cached and recomputed generations agree.
- `every_step`: every forward, every real query row; in a cached decode step that is the one
  new row (a single-row statistic), in a recomputed one the whole sequence.
Padding rows (segment `pad`) are never edited.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxinterp.edits import Edit
from jaxinterp.errors import ArgumentError
from jaxinterp.attention.streaming import visible_keys
from jaxinterp.models.sites import Context, segment_id

Array = jax.Array
APPLY_AT = ("prefill", "every_step")
PAD, GENERATED = segment_id("pad"), segment_id("generated")


def check_apply_at(apply_at: str) -> None:
    if apply_at not in APPLY_AT:
        raise ArgumentError(f"apply_at: expected one of {APPLY_AT}, found {apply_at!r}")


def edited_rows(ctx: Context, apply_at: str) -> Array | None:
    """[B, T] bool: the query rows an edit with `apply_at` acts on; None when it skips this forward."""
    if apply_at == "prefill" and ctx.decoding:
        return None
    rows = ctx.segments != PAD
    return rows & (ctx.segments != GENERATED) if apply_at == "prefill" else rows


def own_keys(ctx: Context, visible: Array) -> Array:
    """[B, 1, T, S] bool: each query's own key (the diagonal of self-attention).

    In a full forward or a prefill (which starts from an empty cache) query t is key t; in a
    decode step the query is the newest written slot, its last visible key.
    """
    length, keys = visible.shape[-2:]
    if not ctx.decoding:
        return (jnp.arange(length)[:, None] == jnp.arange(keys)[None, :])[None, None]
    last = keys - 1 - jnp.argmax(visible[:, :1, :, ::-1], axis=-1)  # [B, 1, T]
    return jnp.arange(keys) == last[..., None]


class RowEdit(Edit):
    """Base of edits that rewrite the probabilities of `self.layers` row by row at `self.apply_at`:
    subclasses implement `rewrite(probs, visible, ctx)`, which sees only the edited rows as visible
    and whose result is kept on those rows alone."""

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(f"blocks.{layer}.attn.probs" for layer in self.layers)

    def rewrite(self, probs: Array, visible: Array, ctx: Context) -> Array:
        raise NotImplementedError

    def __call__(self, probs: Array, ctx: Context) -> Array:
        rows = edited_rows(ctx, self.apply_at)
        if rows is None:
            return probs
        rows = rows[:, None, :, None]
        return jnp.where(rows, self.rewrite(probs, visible_keys(ctx.scores) & rows, ctx), probs)
