"""Hugging Face config.json -> `LlamaConfig` (Llama, SmolLM2, Mistral, Qwen2).

Anything this implementation would compute differently from the reference (activation, rope
type, partial rotary, an unknown model type) is a ConfigError naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxinterp.errors import ConfigError
from jaxinterp.models.llama.model import LlamaConfig
from jaxinterp.models.rope import RopeConfig

HF_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _rope_from_hf(hf: Mapping[str, Any], source: str) -> RopeConfig:
    """Reads rope settings from either the v5 `rope_parameters` or the v4 `rope_scaling` + `rope_theta`.

    Where a config holds both, `rope_scaling` wins, as in transformers (`convert_rope_params_to_dict`),
    so a file means the same model to both readers.
    """
    params = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
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
