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

Two paths compute the same values, chosen per layer at trace time. When an edit, delta,
capture or finiteness check observes the layer's `attn.scores` or `attn.probs`, the full
[B, H, T, S] pattern is materialised and routed through those sites. Otherwise the layer
takes the fused path: cuDNN's flash attention on a GPU (bfloat16/float16, where cuDNN
accepts the shapes), else the same scores and softmax computed a block of queries at a
time, skipping the keys a causal mask hides, so neither the memory nor the work of the
full pattern is spent (`benchmarks/forward.py` measures both paths).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxinterp.models.masks import Mask, apply_mask
from jaxinterp.models.sites import Context, Tap

Array = jax.Array

# Query blocks of the fused path: at least this many queries each, at most MAX_BLOCKS per
# layer (an unrolled loop, so the compiled program stays small for long sequences). 64 ran
# the fused op 1.46x faster than 128 at 1,024 tokens on a 2-core AVX2 CPU (SmolLM2 shapes;
# 32 and 256 were slower): smaller blocks skip more of the masked keys.
MIN_BLOCK = 64
MAX_BLOCKS = 16


def attend(
    q: Array,
    k: Array,
    v: Array,
    *,
    allowed: Mask | Array,
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
      allowed: the layer's `Mask` (or a bare boolean [B, 1, T, S] array); S = T without a
        cache, the cache size with one.
      tap: the forward's site router; prefix: e.g. `blocks.3` or `vision.blocks.0`.
      ctx: context of this layer (positions, segments, key description).
      scale: multiplier of q.k (usually head_dim ** -0.5).
      cache: optional ([B, S, KV, Dh], [B, S, KV, Dh]) slots of this layer.
      write_at: slot index where the new keys/values go (with a cache).
    """
    mask = allowed if isinstance(allowed, Mask) else Mask(allowed)
    q = tap(f"{prefix}.attn.q", q, ctx)
    k = tap(f"{prefix}.attn.k", k, ctx)
    v = tap(f"{prefix}.attn.v", v, ctx)
    if cache is not None:
        k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), write_at, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), write_at, axis=1)
        cache = (k, v)
    if tap.observes(f"{prefix}.attn.scores") or tap.observes(f"{prefix}.attn.probs"):
        scores = tap(f"{prefix}.attn.scores", _scores(q, k, mask.allowed, scale), ctx)
        probs = tap(f"{prefix}.attn.probs", jax.nn.softmax(scores, axis=-1), ctx.replace(scores=scores))
        out = _mix(probs, v)
    else:
        out = fused_attention(q, k, v, mask, scale)
    return tap(f"{prefix}.attn.head_out", out, ctx.replace(values=v)), cache


def _scores(q: Array, k: Array, allowed: Array, scale: float) -> Array:
    """Masked float32 scores [B, H, T, S] of queries [B, T, H, Dh] against keys [B, S, KV, Dh].

    The product runs as [B, KV, G*T, Dh] x [B, KV, S, Dh]: batch dimensions leading, every
    query of a key head in one matrix, a layout XLA's CPU dot runs 1.6x faster than the
    grouped einsum over [B, T, KV, G, Dh].
    """
    batch, length, heads, head_dim = q.shape
    kv_heads, keys = k.shape[2], k.shape[1]
    group = heads // kv_heads
    grouped = q.reshape(batch, length, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
    grouped = grouped.reshape(batch, kv_heads, group * length, head_dim)
    scores = jnp.einsum("bkqd,bksd->bkqs", grouped, k.transpose(0, 2, 1, 3), preferred_element_type=jnp.float32)
    return apply_mask(scores.reshape(batch, heads, length, keys) * scale, allowed)


def _mix(probs: Array, v: Array) -> Array:
    """Per-head outputs [B, T, H, Dh] (in v's dtype) of probabilities [B, H, T, S] over values [B, S, KV, Dh]."""
    batch, heads, length, keys = probs.shape
    kv_heads, head_dim = v.shape[2], v.shape[3]
    group = heads // kv_heads
    grouped = probs.reshape(batch, kv_heads, group * length, keys).astype(v.dtype)
    out = jnp.einsum("bkqs,bksd->bkqd", grouped, v.transpose(0, 2, 1, 3), preferred_element_type=jnp.float32)
    out = out.reshape(batch, kv_heads, group, length, head_dim).transpose(0, 3, 1, 2, 4)
    return out.reshape(batch, length, heads, head_dim).astype(v.dtype)


def fused_attention(q: Array, k: Array, v: Array, mask: Mask, scale: float) -> Array:
    """`_mix(softmax(_scores(...)), v)` without materialising the whole pattern (see the module docstring)."""
    fused = _cudnn_attention(q, k, v, mask, scale)
    if fused is not None:
        return fused
    length, keys = q.shape[1], k.shape[1]
    block = max(MIN_BLOCK, -(-length // MAX_BLOCKS))
    outs = []
    for start in range(0, length, block):
        stop = min(start + block, length)
        end = stop if mask.triangular else keys
        rows = mask.allowed if mask.allowed.shape[2] == 1 else mask.allowed[:, :, start:stop]  # [B, 1, 1, S] broadcasts
        scores = _scores(q[:, start:stop], k[:, :end], rows[..., :end], scale)
        outs.append(_mix(jax.nn.softmax(scores, axis=-1), v[:, :end]))
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
    if mask.triangular and len(outs) > 1:
        # A query that sees no key gets uniform attention over all S keys on the materialised
        # path; blocks that skipped keys would average fewer, so give such rows that mean.
        heads, kv_heads = q.shape[2], k.shape[2]
        uniform = jnp.repeat(jnp.mean(v.astype(jnp.float32), axis=1), heads // kv_heads, axis=1).astype(v.dtype)
        sees_any = jnp.any(mask.allowed[:, 0], axis=-1)[:, :, None, None]  # [B, T, 1, 1]
        out = jnp.where(sees_any, out, uniform[:, None])
    return out


def _cudnn_attention(q: Array, k: Array, v: Array, mask: Mask, scale: float) -> Array | None:
    """cuDNN flash attention on a GPU, or None where it does not apply (another backend, a
    float32 model, a single decode query, or shapes cuDNN refuses)."""
    if jax.default_backend() != "gpu" or q.dtype not in (jnp.bfloat16, jnp.float16) or q.shape[1] == 1:
        return None
    batch, length, heads, _ = q.shape
    # every head spelled out: cuDNN's batching rule (under `vmap`, e.g. in `sweep`) mis-shapes a mask broadcast over heads
    allowed = jnp.broadcast_to(mask.allowed, (batch, heads, length, k.shape[1]))
    try:
        return jax.nn.dot_product_attention(q, k, v, mask=allowed, scale=scale, implementation="cudnn")
    except (NotImplementedError, ValueError, RuntimeError):
        return None
