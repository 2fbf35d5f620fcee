"""Hugging Face GPT-2 config.json -> `GPT2Config`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxinterp.errors import ConfigError
from jaxinterp.models.gpt2.model import GPT2Config


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
