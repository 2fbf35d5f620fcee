"""Name map of CLIP's vision tower: Hugging Face names -> parameters of `models/clip_vision/config.py`.

`prefix` is where the tower's tensors live: `vision_model.` (transformers 4, full CLIP
models) or `` (a transformers 5 `CLIPVisionModel`); inside LLaVA e.g.
`model.vision_tower.vision_model.`. `post_layernorm` normalises only the pooled class token,
which is not computed, so its tensors are skipped.
"""

from __future__ import annotations

import re

from jaxinterp.models.layouts import CONV_PATCH, SAME, Layout
from jaxinterp.models.vit_checkpoint import OTHER_HALF, PLACEMENTS, encoder_map

__all__ = ["PLACEMENTS", "ignored", "name_map"]


def name_map(config, prefix: str = "vision_model.", *, tower_only: bool = False) -> dict[str, tuple[str, Layout]]:
    """Parameter path -> (Hugging Face tensor name, layout) for a `ClipVisionConfig`
    (`tower_only` changes nothing here; see `ignored`)."""
    embeddings = f"{prefix}embeddings."
    return {
        "vision/class_embed": (f"{embeddings}class_embedding", SAME),
        "vision/patch_embed/kernel": (f"{embeddings}patch_embedding.weight", CONV_PATCH),
        "vision/position_embed": (f"{embeddings}position_embedding.weight", SAME),
        "vision/pre_norm/scale": (f"{prefix}pre_layrnorm.weight", SAME),
        "vision/pre_norm/bias": (f"{prefix}pre_layrnorm.bias", SAME),
        **encoder_map(config, prefix),
    }


def ignored(config, prefix: str = "vision_model.", *, tower_only: bool = False) -> tuple[str, ...]:
    """The pooled token's `post_layernorm`, old checkpoints' `position_ids` buffer, and, unless
    `tower_only` (the tower inside a vision-language model), the rest of a full CLIP model."""
    unused = (r"post_layernorm\.(weight|bias)", r"embeddings\.position_ids")
    skipped = tuple(re.escape(prefix) + name for name in unused)
    return skipped + (() if tower_only else OTHER_HALF)
