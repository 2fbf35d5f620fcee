"""TransformerLens hook names, accepted wherever a site pattern is.

Researchers arriving from TransformerLens can write `blocks.3.hook_resid_post` or
`blocks.*.attn.hook_pattern`; the pattern is translated to our site vocabulary before
matching. Shapes follow our sites (which match TransformerLens' for these hooks:
`hook_pattern` is [batch, head, query, key], `hook_z` is [batch, pos, head, d_head]).
`hook_embed` is our `embed`, which for GPT-2 already includes the position embedding
(TransformerLens' `hook_embed + hook_pos_embed`). Hooks without a counterpart here
(`ln1.hook_normalized`, `mlp.hook_pre`, `hook_pos_embed`, ...) match nothing and are
reported as unknown sites. TransformerLens' `ln1.hook_normalized` / `ln2.hook_normalized`
are the norms' outputs before their weight; our `attn.in` / `mlp.in` are after it, so they
are not mapped.
"""

from __future__ import annotations

import re

TRANSFORMER_LENS = {
    "hook_embed": "embed",
    "ln_final.hook_normalized": "final_norm",
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn.out",
    "hook_mlp_out": "mlp.out",
    "attn.hook_q": "attn.q",
    "attn.hook_k": "attn.k",
    "attn.hook_v": "attn.v",
    "attn.hook_attn_scores": "attn.scores",
    "attn.hook_pattern": "attn.probs",
    "attn.hook_z": "attn.head_out",
    "mlp.hook_post": "mlp.act",
}
_SUFFIX = re.compile(r"(^|\.)(" + "|".join(re.escape(k) for k in sorted(TRANSFORMER_LENS, key=len, reverse=True)) + r")$")


def translate(pattern: str) -> str:
    """`pattern` with a trailing TransformerLens hook name replaced by our site name."""
    return _SUFFIX.sub(lambda m: m.group(1) + TRANSFORMER_LENS[m.group(2)], pattern)
