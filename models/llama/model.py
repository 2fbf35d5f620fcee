"""The Llama family as one pure Flax model: Llama 2/3, SmolLM2, Mistral, Qwen2.

The variants differ only in configuration: grouped-query attention (`num_kv_heads`), an
explicit `head_dim`, rotary scaling (`rope`), q/k/v and output biases (Qwen2, Llama with
`attention_bias`), sliding-window attention (Mistral, Qwen2's window layers), tied or
untied embeddings, and causal or bidirectional attention (masked-diffusion LMs).

Sites, per block `blocks.{i}` (shapes for a [B, T] batch, D hidden, H heads, KV key/value
heads, Dh head_dim, F intermediate, S keys):

  resid_pre [B,T,D] -> attn.in [B,T,D] (attention input norm) -> attn.q [B,T,H,Dh], attn.k / attn.v [B,T,KV,Dh] (after rotary)
  -> attn.scores / attn.probs [B,H,T,S] f32 -> attn.head_out [B,T,H,Dh] -> attn.out [B,T,D]
  -> resid_mid [B,T,D] -> mlp.in [B,T,D] (MLP input norm) -> mlp.act [B,T,F] (silu(gate) * up) -> mlp.out [B,T,D] -> resid_post [B,T,D]

and, around the blocks, `embed` [B,T,D], `final_norm` [B,T,D], `logits` [B,T,V] f32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax

from jaxinterp.errors import ConfigError
from jaxinterp.models.attention import attend
from jaxinterp.models.batch import Batch, KVCache
from jaxinterp.models.family import FamilyConfig, check_objective
from jaxinterp.models.layers import DenseGeneral, RMSNorm
from jaxinterp.models.rope import RopeConfig, apply_rotary
from jaxinterp.models.shell import gated_mlp, rotary_decoder
from jaxinterp.models.sites import Context, Tap

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig(FamilyConfig):
    """Shape and behaviour of a Llama-family model.

    Attributes:
      vocab_size, hidden_size, intermediate_size: embedding rows, residual width, MLP width.
      num_layers: number of transformer blocks.
      num_heads, num_kv_heads: query heads and key/value heads (GQA when fewer kv heads).
      head_dim: width of one head (may differ from hidden_size // num_heads).
      rms_norm_eps: epsilon of every RMSNorm.
      rope: rotary embedding settings (theta and scaling rule).
      max_position_embeddings: the longest context the checkpoint was built for.
      tie_word_embeddings: the output projection is the transposed token embedding.
      qkv_bias: q/k/v projections carry biases (Qwen2; Llama's `attention_bias`).
      o_bias: the output projection carries a bias (Llama's `attention_bias`).
      mlp_bias: gate/up/down projections carry biases.
      sliding_window: window of sliding-window attention, None for full attention.
      window_layers: indices of the blocks that use the window (None: all blocks).
      causal: the attention mask: causal, or (False) bidirectional (masked-diffusion LMs, positional schemes).
      objective: what the logits predict: `next_token` (logits at t score token t + 1) or
        `masked_token` (masked-diffusion LMs: logits at t score token t). Independent of `causal`.
      bos_token_id, eos_token_ids, pad_token_id: special tokens from the checkpoint.
      mask_token_id: the mask token of a masked-diffusion LM (LLaDA), None otherwise.
    """

    family: ClassVar[str] = "llama"

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = RopeConfig()
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    window_layers: tuple[int, ...] | None = None
    causal: bool = True
    objective: str = "next_token"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    mask_token_id: int | None = None

    def __post_init__(self):
        check_objective(self.objective)
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_kv_heads: expected a divisor of num_heads={self.num_heads}, found {self.num_kv_heads}"
            )

    def window(self, layer: int) -> int | None:
        """The sliding window of block `layer` (None: full attention)."""
        if self.sliding_window is None or (self.window_layers is not None and layer not in self.window_layers):
            return None
        return self.sliding_window

    def module(self) -> nn.Module:
        return Llama(self)

    def tensor_parallel_rules(self) -> dict[str, int]:
        """Parameter path regex -> the dimension that tensor parallelism splits (Megatron)."""
        return TENSOR_PARALLEL

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LlamaConfig:
        data = dict(data)
        data["rope"] = RopeConfig(**data["rope"])
        data.setdefault("objective", "next_token" if data.get("causal", True) else "masked_token")  # saved before 0.5
        for key in ("window_layers", "eos_token_ids"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


# Column-parallel q/k/v and gate/up (split by head / MLP unit), row-parallel o/down, so each
# block needs one all-reduce after attention and one after the MLP.
TENSOR_PARALLEL = {
    r"blocks_\d+/(q|k|v)_proj/kernel": 1,  # [D, heads, Dh]
    r"blocks_\d+/(q|k|v)_proj/bias": 0,  # [heads, Dh]
    r"blocks_\d+/o_proj/kernel": 0,  # [H, Dh, D]
    r"blocks_\d+/(gate|up)_proj/kernel": 1,  # [D, F]
    r"blocks_\d+/(gate|up)_proj/bias": 0,  # [F]
    r"blocks_\d+/down_proj/kernel": 0,  # [F, D]
}


class Block(nn.Module):
    """One pre-norm transformer block: attention then gated MLP, each added to the residual."""

    config: LlamaConfig
    layer: int

    @nn.compact
    def __call__(self, x, *, tap: Tap, ctx: Context, rotary, allowed, cache, write_at):
        cfg, prefix = self.config, f"blocks.{self.layer}"
        ctx = ctx.replace(layer=self.layer)
        x = tap(f"{prefix}.resid_pre", x, ctx)
        h = tap(f"{prefix}.attn.in", RMSNorm(cfg.rms_norm_eps, name="attn_norm")(x), ctx)
        q = DenseGeneral((cfg.num_heads, cfg.head_dim), use_bias=cfg.qkv_bias, name="q_proj")(h)
        k = DenseGeneral((cfg.num_kv_heads, cfg.head_dim), use_bias=cfg.qkv_bias, name="k_proj")(h)
        v = DenseGeneral((cfg.num_kv_heads, cfg.head_dim), use_bias=cfg.qkv_bias, name="v_proj")(h)
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        heads, cache = attend(
            q, k, v, allowed=allowed, tap=tap, prefix=prefix, ctx=ctx,
            scale=cfg.head_dim ** -0.5, cache=cache, write_at=write_at,
        )
        attn_out = DenseGeneral(cfg.hidden_size, axis=(-2, -1), use_bias=cfg.o_bias, name="o_proj")(heads)
        x = tap(f"{prefix}.resid_mid", x + tap(f"{prefix}.attn.out", attn_out, ctx), ctx)
        return gated_mlp(x, cfg=cfg, prefix=prefix, tap=tap, ctx=ctx, bias=cfg.mlp_bias), cache


class Llama(nn.Module):
    """Token ids (or input embeddings) -> float32 logits, every intermediate through a site."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, batch: Batch, tap: Tap, cache: KVCache | None = None, decoding: bool = False):
        cfg = self.config
        return rotary_decoder(self, cfg, batch, tap, cache, decoding, lambda i: Block(cfg, i, name=f"blocks_{i}"),
                              [cfg.window(i) for i in range(cfg.num_layers)])
