"""Name map of the Llama family (Llama, SmolLM2, Mistral, Qwen2): Hugging Face names -> parameters.

Keys are parameter paths (`/`-joined) of `jaxinterp.models.llama.Llama`; values are the
Hugging Face tensor name and its layout. GGUF files reach this table through
`converters.gguf_file`, which renames llama.cpp tensors to these names.
"""

from __future__ import annotations

import re

from jaxinterp.models.layouts import LINEAR, LINEAR_SPLIT_IN, LINEAR_SPLIT_OUT, SAME, SPLIT, Layout


def name_map(config, prefix: str = "model.", head: str = "lm_head.weight") -> dict[str, tuple[str, Layout]]:
    """Parameter path -> (Hugging Face tensor name, layout) for a `LlamaConfig`.

    `prefix` is where the decoder's tensors live (`model.` in a causal LM, e.g.
    `model.language_model.` inside LLaVA) and `head` the output projection's name.
    """
    table = {
        "embed": (f"{prefix}embed_tokens.weight", SAME),
        "final_norm/scale": (f"{prefix}norm.weight", SAME),
    }
    if not config.tie_word_embeddings:
        table["lm_head"] = (head, SAME)
    for i in range(config.num_layers):
        ours, theirs = f"blocks_{i}", f"{prefix}layers.{i}"
        table[f"{ours}/attn_norm/scale"] = (f"{theirs}.input_layernorm.weight", SAME)
        table[f"{ours}/mlp_norm/scale"] = (f"{theirs}.post_attention_layernorm.weight", SAME)
        for proj in ("q_proj", "k_proj", "v_proj"):
            table[f"{ours}/{proj}/kernel"] = (f"{theirs}.self_attn.{proj}.weight", LINEAR_SPLIT_OUT)
            if config.qkv_bias:
                table[f"{ours}/{proj}/bias"] = (f"{theirs}.self_attn.{proj}.bias", SPLIT)
        table[f"{ours}/o_proj/kernel"] = (f"{theirs}.self_attn.o_proj.weight", LINEAR_SPLIT_IN)
        if config.o_bias:
            table[f"{ours}/o_proj/bias"] = (f"{theirs}.self_attn.o_proj.bias", SAME)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            table[f"{ours}/{proj}/kernel"] = (f"{theirs}.mlp.{proj}.weight", LINEAR)
            if config.mlp_bias:
                table[f"{ours}/{proj}/bias"] = (f"{theirs}.mlp.{proj}.bias", SAME)
    return table


def ignored(config, prefix: str = "model.", head: str = "lm_head.weight") -> tuple[str, ...]:
    """Regexes of checkpoint tensors the model does not use: rotary caches of old checkpoints,
    and a tied model's saved copy of the embedding."""
    skipped = (re.escape(prefix) + r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)
    return skipped + ((re.escape(head),) if config.tie_word_embeddings else ())
