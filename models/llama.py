"""The Llama family as one pure Flax model: Llama 2/3, SmolLM2, Mistral, Qwen2.

The variants differ only in configuration: grouped-query attention (`num_kv_heads`), an
explicit `head_dim`, rotary scaling (`rope`), q/k/v and output biases (Qwen2, Llama with
`attention_bias`), sliding-window attention (Mistral, Qwen2's window layers), tied or
untied embeddings, and causal or bidirectional attention (masked-diffusion LMs).

Sites, per block `blocks.{i}` (shapes for a [B, T] batch, D hidden, H heads, KV key/value
heads, Dh head_dim, F intermediate, S keys):

  resid_pre [B,T,D] -> attn.q [B,T,H,Dh], attn.k / attn.v [B,T,KV,Dh] (after rotary)
  -> attn.scores / attn.probs [B,H,T,S] f32 -> attn.head_out [B,T,H,Dh] -> attn.out [B,T,D]
  -> resid_mid [B,T,D] -> mlp.act [B,T,F] (silu(gate) * up) -> mlp.out [B,T,D] -> resid_post [B,T,D]

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
from jaxinterp.models.family import check_objective
from jaxinterp.models.layers import DenseGeneral, RMSNorm
from jaxinterp.models.rope import RopeConfig, apply_rotary
from jaxinterp.models.shell import gated_mlp, rotary_decoder
from jaxinterp.models.sites import Context, Tap

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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


# ---------------------------------------------------------------------------------------
# Hugging Face config.json -> LlamaConfig

HF_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _rope_from_hf(hf: Mapping[str, Any], source: str) -> RopeConfig:
    """Reads rope settings from either the v5 `rope_parameters` or the v4 `rope_scaling` + `rope_theta`."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "linear", "llama3"):
        raise ConfigError(f"{source}: rope type: expected default, linear or llama3, found {kind!r}")
    if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise ConfigError(f"{source}: partial_rotary_factor: expected 1.0, found {params['partial_rotary_factor']}")
    return RopeConfig(
        theta=float(theta),
        kind=kind,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position=int(
            params.get("original_max_position_embeddings", hf.get("max_position_embeddings", 8192))
        ),
    )


def _window_from_hf(hf: Mapping[str, Any], model_type: str, layers: int) -> tuple[int | None, tuple[int, ...] | None]:
    """Sliding window and the blocks it applies to, per the family's conventions."""
    window = hf.get("sliding_window")
    if model_type == "llama" or window is None:
        return None, None
    if model_type == "mistral":
        return int(window), None
    # qwen2: explicit layer_types, else use_sliding_window from max_window_layers on.
    if hf.get("layer_types"):
        chosen = tuple(i for i, kind in enumerate(hf["layer_types"]) if kind == "sliding_attention")
    elif hf.get("use_sliding_window"):
        chosen = tuple(range(int(hf.get("max_window_layers", layers)), layers))
    else:
        chosen = ()
    return (int(window), chosen) if chosen else (None, None)


def from_hf_config(hf: Mapping[str, Any], *, source: str = "config.json") -> LlamaConfig:
    """Builds a `LlamaConfig` from a Hugging Face `config.json` dictionary.

    Raises ConfigError naming the key, the expected and the found value for anything this
    implementation would compute differently from the reference (activation, rope type,
    partial rotary, an unknown model type).
    """
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise ConfigError(f"{source}: model_type: expected one of {sorted(HF_MODEL_TYPES)}, found {model_type!r}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{source}: hidden_act: expected 'silu', found {hf['hidden_act']!r}")
    heads = int(hf["num_attention_heads"])
    layers = int(hf["num_hidden_layers"])
    window, window_layers = _window_from_hf(hf, model_type, layers)
    eos = hf.get("eos_token_id")
    attention_bias = bool(hf.get("attention_bias", False))
    return LlamaConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope=_rope_from_hf(hf, source),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=model_type == "llama" and attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        sliding_window=window,
        window_layers=window_layers,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
        pad_token_id=hf.get("pad_token_id"),
    )


# LLaDA's remote-code config (`model_type: llada`): the values our Llama block implements.
LLADA_REQUIRED = {
    "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "rope": True, "alibi": False,
    "attention_layer_norm": False, "include_bias": False, "include_qkv_bias": False, "input_emb_norm": False,
    "scale_logits": False,
}


def from_llada_config(hf: Mapping[str, Any], *, source: str = "config.json") -> LlamaConfig:
    """A bidirectional `LlamaConfig` from a LLaDA (masked-diffusion LM) `config.json`."""
    for key, supported in LLADA_REQUIRED.items():
        found = hf.get(key, supported)
        if (found.lower() if isinstance(found, str) else found) != supported:
            raise ConfigError(f"{source}: {key}: expected {supported!r}, found {found!r}")
    heads = int(hf["n_heads"])
    hidden = int(hf["d_model"])
    eos = hf.get("eos_token_id")
    return LlamaConfig(
        vocab_size=int(hf.get("embedding_size") or hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf.get("mlp_hidden_size") or hf.get("mlp_ratio", 4) * hidden),
        num_layers=int(hf["n_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("n_kv_heads") or heads),
        head_dim=hidden // heads,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        rope=RopeConfig(theta=float(hf.get("rope_theta", 10000.0))),
        max_position_embeddings=int(hf.get("max_sequence_length", 4096)),
        tie_word_embeddings=bool(hf.get("weight_tying", False)),
        causal=False,
        objective="masked_token",
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
        pad_token_id=hf.get("pad_token_id"),
        mask_token_id=hf.get("mask_token_id"),
    )


# ---------------------------------------------------------------------------------------
# The model


class Block(nn.Module):
    """One pre-norm transformer block: attention then gated MLP, each added to the residual."""

    config: LlamaConfig
    layer: int

    @nn.compact
    def __call__(self, x, *, tap: Tap, ctx: Context, rotary, allowed, cache, write_at):
        cfg, prefix = self.config, f"blocks.{self.layer}"
        ctx = ctx.replace(layer=self.layer)
        x = tap(f"{prefix}.resid_pre", x, ctx)
        h = RMSNorm(cfg.rms_norm_eps, name="attn_norm")(x)
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
