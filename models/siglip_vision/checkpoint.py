"""Name map of SigLIP's vision tower: Hugging Face names -> parameters of `models/siglip_vision/config.py`.

`prefix` is where the tower's tensors live: `vision_model.` (transformers 4, full SigLIP
models) or `` (a transformers 5 `SiglipVisionModel`). The attention-pooling head (`head.*`)
is not implemented and skipped. `tower_only` (the tower inside a vision-language model, which
reads hidden states before `post_layernorm`) leaves out the final LayerNorm.
"""

from __future__ import annotations

import re

from jaxinterp.models.layouts import CONV_PATCH, SAME, Layout
from jaxinterp.models.vit_checkpoint import OTHER_HALF, PLACEMENTS, encoder_map

__all__ = ["PLACEMENTS", "ignored", "name_map"]


def name_map(config, prefix: str = "vision_model.", *, tower_only: bool = False) -> dict[str, tuple[str, Layout]]:
    """Parameter path -> (Hugging Face tensor name, layout) for a `SiglipVisionConfig`."""
    embeddings = f"{prefix}embeddings."
    table = {
        "vision/patch_embed/kernel": (f"{embeddings}patch_embedding.weight", CONV_PATCH),
        "vision/patch_embed/bias": (f"{embeddings}patch_embedding.bias", SAME),
        "vision/position_embed": (f"{embeddings}position_embedding.weight", SAME),
        **encoder_map(config, prefix),
    }
    if not tower_only:
        table["post_norm/scale"] = (f"{prefix}post_layernorm.weight", SAME)
        table["post_norm/bias"] = (f"{prefix}post_layernorm.bias", SAME)
    return table


def ignored(config, prefix: str = "vision_model.", *, tower_only: bool = False) -> tuple[str, ...]:
    """The pooling head, old checkpoints' `position_ids` buffer, and with `tower_only` the final
    LayerNorm, else the rest of a full SigLIP model."""
    unused = (r"head\..*", r"embeddings\.position_ids")
    skipped = tuple(re.escape(prefix) + name for name in unused)
    return skipped + ((re.escape(prefix) + r"post_layernorm\.(weight|bias)",) if tower_only else OTHER_HALF)
