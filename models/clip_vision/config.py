"""CLIP's vision tower (`CLIPVisionModel`, and the tower inside LLaVA-1.5).

A class token precedes the patches, the patch projection has no bias, the embeddings are
layer-normalised (`pre_layrnorm`) before the encoder, and the MLP uses quick-GELU. The
standalone model's `last_hidden_state` is the encoder output: CLIP's `post_layernorm` only
normalises the pooled class token, which this library does not compute (the checkpoint's
`post_layernorm` tensors are skipped). The shared tower is in `models/vit.py`; this package's `checkpoint.py` names its tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from jaxinterp.models.vit import HF_DEFAULTS, VisionConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClipVisionConfig(VisionConfig):
    """A CLIP vision tower (fields documented on `VisionConfig`)."""

    family: ClassVar[str] = "clip_vision"
    class_token: ClassVar[bool] = True
    patch_bias: ClassVar[bool] = False
    pre_norm: ClassVar[bool] = True
    post_norm: ClassVar[bool] = False
    hf_model_types: ClassVar[tuple[str, str]] = ("clip_vision_model", "clip")
    hf_defaults: ClassVar[Mapping[str, Any]] = {
        **HF_DEFAULTS, "patch_size": 32, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu",
    }
