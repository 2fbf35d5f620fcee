"""Scaled dot-product attention through sites, shared by every family.

One head layout serves multi-head, multi-query and grouped-query attention: queries are
grouped as [B, T, KV, G, Dh] against keys [B, S, KV, Dh] (head h uses key/value head
h // G, as in Hugging Face's `repeat_kv`). Sites see the usual per-head views:

  attn.q [B, T, H, Dh]   attn.k / attn.v [B, T, KV, Dh] (new tokens, after rotary)
  attn.scores [B, H, T, S] float32, scaled, after the mask
  attn.probs  [B, H, T, S] float32
  attn.head_out [B, T, H, Dh] per-head output before the output projection

Scores, softmax and probabilities are float32 whatever the parameter dtype. With a cache,
the new keys and values are written at `write_at` and the queries attend every slot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxinterp.models.masks import apply_mask
from jaxinterp.models.sites import Context, Tap

Array = jax.Array


def attend(
    q: Array,
    k: Array,
    v: Array,
    *,
    allowed: Array,
    tap: Tap,
    prefix: str,
    ctx: Context,
    scale: float,
    cache: tuple[Array, Array] | None = None,
    write_at: Array | None = None,
) -> tuple[Array, tuple[Array, Array] | None]:
    """Attention of queries q over keys k / values v; returns (head_out, updated cache slots).

    Args:
      q: [B, T, H, Dh]; k, v: [B, T, KV, Dh] for the new tokens.
      allowed: [B, 1, T, S] boolean mask (S = T without a cache, the cache size with one).
      tap: the forward's site router; prefix: e.g. `blocks.3` or `vision.blocks.0`.
      ctx: context of this layer (positions, segments, key description).
      scale: multiplier of q.k (usually head_dim ** -0.5).
      cache: optional ([B, S, KV, Dh], [B, S, KV, Dh]) slots of this layer.
      write_at: slot index where the new keys/values go (with a cache).
    """
    q = tap(f"{prefix}.attn.q", q, ctx)
    k = tap(f"{prefix}.attn.k", k, ctx)
    v = tap(f"{prefix}.attn.v", v, ctx)
    if cache is not None:
        k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), write_at, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), write_at, axis=1)
        cache = (k, v)
    batch, length, heads, head_dim = q.shape
    kv_heads, keys = k.shape[2], k.shape[1]
    groups = heads // kv_heads
    grouped = q.reshape(batch, length, kv_heads, groups, head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", grouped, k, preferred_element_type=jnp.float32)
    scores = apply_mask(scores.reshape(batch, heads, length, keys) * scale, allowed)
    scores = tap(f"{prefix}.attn.scores", scores, ctx)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = tap(f"{prefix}.attn.probs", probs, ctx.replace(scores=scores))
    grouped_probs = probs.reshape(batch, kv_heads, groups, length, keys).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", grouped_probs, v, preferred_element_type=jnp.float32)
    out = out.reshape(batch, length, heads, head_dim).astype(v.dtype)
    return tap(f"{prefix}.attn.head_out", out, ctx.replace(values=v)), cache
