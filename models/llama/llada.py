"""LLaDA checkpoints (masked-diffusion LMs) as Llama models: their remote-code config and weight names.

LLaDA's blocks are Llama blocks under other names: `attn_out` is the output projection,
`ff_proj` the gated (SiLU) branch, `up_proj` the linear branch, `ff_out` the down
projection and, at the top level, the untied output head. The model is our Llama family
with bidirectional attention and the masked-token objective.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jaxinterp.errors import ConfigError
from jaxinterp.models.layouts import LINEAR, LINEAR_SPLIT_IN, LINEAR_SPLIT_OUT, SAME, Layout
from jaxinterp.models.llama.model import LlamaConfig
from jaxinterp.models.rope import RopeConfig

BLOCK_NAMES = {
    "attn_norm/scale": ("attn_norm.weight", SAME),
    "mlp_norm/scale": ("ff_norm.weight", SAME),
    "q_proj/kernel": ("q_proj.weight", LINEAR_SPLIT_OUT),
    "k_proj/kernel": ("k_proj.weight", LINEAR_SPLIT_OUT),
    "v_proj/kernel": ("v_proj.weight", LINEAR_SPLIT_OUT),
    "o_proj/kernel": ("attn_out.weight", LINEAR_SPLIT_IN),
    "gate_proj/kernel": ("ff_proj.weight", LINEAR),
    "up_proj/kernel": ("up_proj.weight", LINEAR),
    "down_proj/kernel": ("ff_out.weight", LINEAR),
}


def name_map(config, prefix: str = "model.transformer.") -> dict[str, tuple[str, Layout]]:
    """Parameter path -> (LLaDA tensor name, layout) for a `LlamaConfig` read from a LLaDA config."""
    table = {"embed": (f"{prefix}wte.weight", SAME), "final_norm/scale": (f"{prefix}ln_f.weight", SAME)}
    if not config.tie_word_embeddings:
        table["lm_head"] = (f"{prefix}ff_out.weight", SAME)
    for i in range(config.num_layers):
        for ours, (theirs, layout) in BLOCK_NAMES.items():
            table[f"blocks_{i}/{ours}"] = (f"{prefix}blocks.{i}.{theirs}", layout)
    return table


def ignored(config, prefix: str = "model.transformer.") -> tuple[str, ...]:
    return (re.escape(prefix) + r"ff_out\.weight",) if config.tie_word_embeddings else ()


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
