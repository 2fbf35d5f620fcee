"""GPT-2 as a pure Flax model through the library's sites.

Learned absolute positions, pre-LayerNorm blocks, a fused q/k/v projection (split into
q/k/v parameters at conversion), a GELU MLP, and an output projection tied to the token
embedding (or its own `lm_head` when a checkpoint unties them). Site names and shapes are those of the Llama family (see `models/llama.py`):
`embed` is the sum of token and position embeddings; `mlp.act` is gelu(c_fc(x)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxinterp.errors import ConfigError
from jaxinterp.models.attention import attend
from jaxinterp.models.batch import Batch, KVCache, Output
from jaxinterp.models.decoder import call_block, finish, frame
from jaxinterp.models.layers import Dense, DenseGeneral, LayerNorm, activation
from jaxinterp.models.sites import Context, Tap

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPT2Config:
    """Shape and behaviour of a GPT-2 model.

    Attributes:
      vocab_size, hidden_size: token embedding rows and residual width (`n_embd`).
      intermediate_size: MLP width (`n_inner`, default 4 x hidden).
      num_layers, num_heads: blocks and heads (`n_layer`, `n_head`).
      max_position_embeddings: rows of the learned position table (`n_positions`).
      layer_norm_eps: epsilon of every LayerNorm.
      activation: MLP activation (`activation_function`, GPT-2 uses `gelu_new`).
      tie_word_embeddings: the output projection is the transposed token embedding (GPT-2's default).
      bos_token_id, eos_token_ids, pad_token_id: special tokens.
    """

    family: ClassVar[str] = "gpt2"

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int = 1024
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_new"
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    causal: ClassVar[bool] = True
    objective: ClassVar[str] = "next_token"
    learned_positions: ClassVar[bool] = True  # positions index a table: none may lie past its end

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"num_heads: expected a divisor of hidden_size={self.hidden_size}, found {self.num_heads}")
        activation(self.activation)

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def module(self) -> nn.Module:
        return GPT2(self)

    def tensor_parallel_rules(self) -> dict[str, int]:
        return TENSOR_PARALLEL

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GPT2Config:
        return cls(**{**data, "eos_token_ids": tuple(data.get("eos_token_ids", ()))})


TENSOR_PARALLEL = {
    r"blocks_\d+/(q|k|v)_proj/kernel": 1,  # [D, H, Dh]
    r"blocks_\d+/(q|k|v)_proj/bias": 0,  # [H, Dh]
    r"blocks_\d+/o_proj/kernel": 0,  # [H, Dh, D]
    r"blocks_\d+/fc/kernel": 1,  # [D, F]
    r"blocks_\d+/fc/bias": 0,  # [F]
    r"blocks_\d+/proj/kernel": 0,  # [F, D]
}


def from_hf_config(hf: Mapping[str, Any], *, source: str = "config.json") -> GPT2Config:
    """A `GPT2Config` from a Hugging Face GPT-2 `config.json` dictionary."""
    for key, supported in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
        if bool(hf.get(key, supported)) != supported:
            raise ConfigError(f"{source}: {key}: expected {supported}, found {hf[key]!r}")
    hidden = int(hf.get("n_embd", 768))
    eos = hf.get("eos_token_id")
    return GPT2Config(
        vocab_size=int(hf.get("vocab_size", 50257)),
        hidden_size=hidden,
        intermediate_size=int(hf.get("n_inner") or 4 * hidden),
        num_layers=int(hf.get("n_layer", 12)),
        num_heads=int(hf.get("n_head", 12)),
        max_position_embeddings=int(hf.get("n_positions", 1024)),
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation=str(hf.get("activation_function", "gelu_new")),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
        pad_token_id=hf.get("pad_token_id"),
    )


class Block(nn.Module):
    """Pre-LN block: attention and MLP, each added to the residual stream.

    Also the encoder block of the CLIP and SigLIP vision towers (`models/vit.py`), whose
    sites are named under `sites="vision.blocks"`.
    """

    config: GPT2Config
    layer: int
    sites: str = "blocks"

    @nn.compact
    def __call__(self, x, *, tap: Tap, ctx: Context, allowed, cache, write_at):
        cfg, prefix = self.config, f"{self.sites}.{self.layer}"
        ctx = ctx.replace(layer=self.layer)
        x = tap(f"{prefix}.resid_pre", x, ctx)
        h = LayerNorm(cfg.layer_norm_eps, name="attn_norm")(x)
        q, k, v = (DenseGeneral((cfg.num_heads, cfg.head_dim), name=f"{n}_proj")(h) for n in "qkv")
        heads, cache = attend(q, k, v, allowed=allowed, tap=tap, prefix=prefix, ctx=ctx,
                              scale=cfg.head_dim ** -0.5, cache=cache, write_at=write_at)
        attn_out = DenseGeneral(cfg.hidden_size, axis=(-2, -1), name="o_proj")(heads)
        x = tap(f"{prefix}.resid_mid", x + tap(f"{prefix}.attn.out", attn_out, ctx), ctx)
        h = LayerNorm(cfg.layer_norm_eps, name="mlp_norm")(x)
        act = tap(f"{prefix}.mlp.act", activation(cfg.activation)(Dense(cfg.intermediate_size, name="fc")(h)), ctx)
        mlp_out = Dense(cfg.hidden_size, name="proj")(act)
        x = tap(f"{prefix}.resid_post", x + tap(f"{prefix}.mlp.out", mlp_out, ctx), ctx)
        return x, cache


class GPT2(nn.Module):
    """Token ids (or input embeddings) -> float32 logits through sites."""

    config: GPT2Config

    @nn.compact
    def __call__(self, batch: Batch, tap: Tap, cache: KVCache | None = None, decoding: bool = False) -> Output:
        cfg = self.config
        tokens = self.param("embed", nn.initializers.normal(0.02), (cfg.vocab_size, cfg.hidden_size))
        positions = self.param("positions", nn.initializers.normal(0.01), (cfg.max_position_embeddings, cfg.hidden_size))
        shared = frame(batch, cache, causal=True, decoding=decoding)
        x = batch.embed(tokens)
        x = tap("embed", x + positions[batch.positions], shared.ctx)
        slots = []
        for i in range(cfg.num_layers):
            x, layer_slots = call_block(
                Block(cfg, i, name=f"blocks_{i}"), x, tap=tap, ctx=shared.ctx, allowed=shared.mask(),
                cache=shared.layer_cache(i), write_at=shared.write_at,
            )
            slots.append(layer_slots)
        x = tap("final_norm", LayerNorm(cfg.layer_norm_eps, name="final_norm")(x), shared.ctx)
        head = tokens if cfg.tie_word_embeddings else self.param(
            "lm_head", nn.initializers.normal(0.02), (cfg.vocab_size, cfg.hidden_size))
        logits = jnp.einsum("btd,vd->btv", x, head.astype(x.dtype), preferred_element_type=jnp.float32)
        return Output(logits=tap("logits", logits, shared.ctx), hidden=x, cache=finish(shared, slots, batch.tokens.shape[1]))
