"""GPT-2 as a pure Flax model through the library's sites.

Learned absolute positions, pre-LayerNorm blocks, a fused q/k/v projection (split into
q/k/v parameters at conversion), a GELU MLP, and an output projection tied to the token
embedding (or its own `lm_head` when a checkpoint unties them). Site names and shapes are those of the Llama family (see `models/llama/model.py`):
`embed` is the sum of token and position embeddings; `mlp.act` is gelu(c_fc(x)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax

from jaxinterp.errors import ConfigError
from jaxinterp.models.batch import Batch, KVCache, Output
from jaxinterp.models.decoder import call_block, finish, frame
from jaxinterp.models.family import FamilyConfig
from jaxinterp.models.layers import LayerNorm, activation
from jaxinterp.models.shell import LayerNormBlock, unembed
from jaxinterp.models.sites import Tap

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPT2Config(FamilyConfig):
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
                LayerNormBlock(cfg, i, name=f"blocks_{i}"), x, tap=tap, ctx=shared.ctx, allowed=shared.mask(),
                cache=shared.layer_cache(i), write_at=shared.write_at,
            )
            slots.append(layer_slots)
        x = tap("final_norm", LayerNorm(cfg.layer_norm_eps, name="final_norm")(x), shared.ctx)
        return Output(logits=unembed(self, cfg, x, tokens, tap, shared.ctx), hidden=x, cache=finish(shared, slots, batch.tokens.shape[1]))
