"""The pieces families share instead of copying: the token embedder, the gated MLP, the
unembedding, the whole rotary RMSNorm decoder shell (Llama, LLaDA, MoA) and the pre-LN
LayerNorm block (GPT-2, the CLIP and SigLIP towers).

Each runs inside a Flax module's compact `__call__` (the submodules it creates belong to that
module, so parameter paths are the family's own: `blocks_3/gate_proj`, `final_norm`, `lm_head`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxinterp.models.batch import Batch, KVCache, Output
from jaxinterp.models.decoder import call_block, finish, frame
from jaxinterp.models.attention import attend
from jaxinterp.models.layers import Dense, DenseGeneral, LayerNorm, RMSNorm, activation
from jaxinterp.models.rope import inverse_frequencies, rotary_tables
from jaxinterp.models.sites import Context, Tap

Array = jax.Array


def embed_tokens(module: nn.Module, cfg: Any, batch: Batch, tap: Tap, ctx: Context) -> tuple[Array, Array]:
    """(the token table `embed` [V, D], the `embed` site: token rows with `Batch.embeds` spliced in)."""
    table = module.param("embed", nn.initializers.normal(0.02), (cfg.vocab_size, cfg.hidden_size))
    return table, tap("embed", batch.embed(table), ctx)


def unembed(module: nn.Module, cfg: Any, x: Array, table: Array, tap: Tap, ctx: Context) -> Array:
    """Float32 logits [B, T, V] through the `logits` site: the tied token table or an `lm_head`."""
    head = table if cfg.tie_word_embeddings else module.param(
        "lm_head", nn.initializers.normal(0.02), (cfg.vocab_size, cfg.hidden_size))
    logits = jnp.einsum("btd,vd->btv", x, head.astype(x.dtype), preferred_element_type=jnp.float32)
    return tap("logits", logits, ctx)


def gated_mlp(x: Array, *, cfg: Any, prefix: str, tap: Tap, ctx: Context, bias: bool = False) -> Array:
    """Pre-norm gated MLP added to the residual: down(silu(gate(h)) * up(h)) through the
    `mlp.in`, `mlp.act`, `mlp.out` and `resid_post` sites of block `prefix`."""
    h = tap(f"{prefix}.mlp.in", RMSNorm(cfg.rms_norm_eps, name="mlp_norm")(x), ctx)
    gate = Dense(cfg.intermediate_size, use_bias=bias, name="gate_proj")(h)
    up = Dense(cfg.intermediate_size, use_bias=bias, name="up_proj")(h)
    act = tap(f"{prefix}.mlp.act", nn.silu(gate) * up, ctx)
    out = Dense(cfg.hidden_size, use_bias=bias, name="down_proj")(act)
    return tap(f"{prefix}.resid_post", x + tap(f"{prefix}.mlp.out", out, ctx), ctx)


def rotary_decoder(module: nn.Module, cfg: Any, batch: Batch, tap: Tap, cache: KVCache | None, decoding: bool,
                   block: Callable[[int], nn.Module], windows: Sequence[int | None]) -> Output:
    """Embed, the blocks `block(i)` over one frame (rotary tables, one mask per window), final
    RMSNorm and unembedding: the whole forward of a rotary RMSNorm decoder."""
    shared = frame(batch, cache, causal=cfg.causal, windows=windows, decoding=decoding)
    rotary = rotary_tables(batch.positions, inverse_frequencies(cfg.rope, cfg.head_dim))
    table, x = embed_tokens(module, cfg, batch, tap, shared.ctx)
    slots = []
    for i in range(cfg.num_layers):
        x, layer_slots = call_block(block(i), x, tap=tap, ctx=shared.ctx, rotary=rotary, allowed=shared.mask(windows[i]),
                                    cache=shared.layer_cache(i), write_at=shared.write_at)
        slots.append(layer_slots)
    x = tap("final_norm", RMSNorm(cfg.rms_norm_eps, name="final_norm")(x), shared.ctx)
    logits = unembed(module, cfg, x, table, tap, shared.ctx)
    return Output(logits=logits, hidden=x, cache=finish(shared, slots, batch.tokens.shape[1]))


class LayerNormBlock(nn.Module):
    """Pre-LN block: LayerNorm'd attention and MLP, each added to the residual stream (GPT-2's
    decoder block, and the CLIP/SigLIP encoder block with `sites="vision.blocks"`). The config
    needs `hidden_size`, `num_heads`, `head_dim`, `intermediate_size`, `layer_norm_eps` and
    `activation`."""

    config: Any
    layer: int
    sites: str = "blocks"

    @nn.compact
    def __call__(self, x, *, tap: Tap, ctx: Context, allowed, cache, write_at):
        cfg, prefix = self.config, f"{self.sites}.{self.layer}"
        ctx = ctx.replace(layer=self.layer)
        x = tap(f"{prefix}.resid_pre", x, ctx)
        h = tap(f"{prefix}.attn.in", LayerNorm(cfg.layer_norm_eps, name="attn_norm")(x), ctx)
        q, k, v = (DenseGeneral((cfg.num_heads, cfg.head_dim), name=f"{n}_proj")(h) for n in "qkv")
        heads, cache = attend(q, k, v, allowed=allowed, tap=tap, prefix=prefix, ctx=ctx,
                              scale=cfg.head_dim ** -0.5, cache=cache, write_at=write_at)
        attn_out = DenseGeneral(cfg.hidden_size, axis=(-2, -1), name="o_proj")(heads)
        x = tap(f"{prefix}.resid_mid", x + tap(f"{prefix}.attn.out", attn_out, ctx), ctx)
        h = tap(f"{prefix}.mlp.in", LayerNorm(cfg.layer_norm_eps, name="mlp_norm")(x), ctx)
        act = tap(f"{prefix}.mlp.act", activation(cfg.activation)(Dense(cfg.intermediate_size, name="fc")(h)), ctx)
        mlp_out = Dense(cfg.hidden_size, name="proj")(act)
        x = tap(f"{prefix}.resid_post", x + tap(f"{prefix}.mlp.out", mlp_out, ctx), ctx)
        return x, cache
