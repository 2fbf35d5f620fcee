"""Name map of LLaDA checkpoints (masked-diffusion LMs; their remote-code weight names).

LLaDA's blocks are Llama blocks under other names: `attn_out` is the output projection,
`ff_proj` the gated (SiLU) branch, `up_proj` the linear branch, `ff_out` the down
projection and, at the top level, the untied output head. The model is our Llama family
with bidirectional attention (see `models.llama.from_llada_config`).
"""

from __future__ import annotations

import re

from jaxinterp.converters.layouts import LINEAR, LINEAR_SPLIT_IN, LINEAR_SPLIT_OUT, SAME, Layout

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
