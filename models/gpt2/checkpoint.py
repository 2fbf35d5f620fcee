"""Name map of GPT-2 (`GPT2LMHeadModel`): Hugging Face names -> parameters.

GPT-2 stores linear weights as Conv1D [in, out] (no transpose needed) and q/k/v fused
side by side in `c_attn`, which the layouts split into three parameters.
"""

from __future__ import annotations

import re

from jaxinterp.models.layouts import SAME, SPLIT_IN, Layout, fused_bias, fused_columns


def name_map(config, prefix: str = "transformer.") -> dict[str, tuple[str, Layout]]:
    """Parameter path -> (Hugging Face tensor name, layout) for a `GPT2Config`."""
    table = {
        "embed": (f"{prefix}wte.weight", SAME),
        "positions": (f"{prefix}wpe.weight", SAME),
        "final_norm/scale": (f"{prefix}ln_f.weight", SAME),
        "final_norm/bias": (f"{prefix}ln_f.bias", SAME),
    }
    if not config.tie_word_embeddings:
        table["lm_head"] = ("lm_head.weight", SAME)
    for i in range(config.num_layers):
        ours, theirs = f"blocks_{i}", f"{prefix}h.{i}"
        for norm, hf in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            table[f"{ours}/{norm}/scale"] = (f"{theirs}.{hf}.weight", SAME)
            table[f"{ours}/{norm}/bias"] = (f"{theirs}.{hf}.bias", SAME)
        for part, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            table[f"{ours}/{proj}/kernel"] = (f"{theirs}.attn.c_attn.weight", fused_columns(part, 3))
            table[f"{ours}/{proj}/bias"] = (f"{theirs}.attn.c_attn.bias", fused_bias(part, 3))
        table[f"{ours}/o_proj/kernel"] = (f"{theirs}.attn.c_proj.weight", SPLIT_IN)
        table[f"{ours}/o_proj/bias"] = (f"{theirs}.attn.c_proj.bias", SAME)
        for ours_name, hf in (("fc", "c_fc"), ("proj", "c_proj")):
            table[f"{ours}/{ours_name}/kernel"] = (f"{theirs}.mlp.{hf}.weight", SAME)
            table[f"{ours}/{ours_name}/bias"] = (f"{theirs}.mlp.{hf}.bias", SAME)
    return table


def ignored(config, prefix: str = "transformer.") -> tuple[str, ...]:
    """A tied output projection's saved copy and old checkpoints' attention-mask buffers."""
    tied = ("lm_head\\.weight",) if config.tie_word_embeddings else ()
    return (*tied, re.escape(prefix) + r"h\.\d+\.attn\.(bias|masked_bias)")
