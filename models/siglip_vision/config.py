"""SigLIP's vision tower (`SiglipVisionModel`, and the tower of SigLIP-based VLMs).

No class token, a patch projection with bias, no LayerNorm before the encoder, a GELU (tanh
approximation) MLP, and a `post_layernorm` on every token of the encoder output, which is the
standalone model's `last_hidden_state` (site `vision.post_norm`). The attention-pooling head
(`head.*` tensors) is not implemented: its tensors are skipped. The shared tower is in
`models/vit.py`; this package's `checkpoint.py` names its tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from jaxinterp.models.vit import HF_DEFAULTS, VisionConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class SiglipVisionConfig(VisionConfig):
    """A SigLIP vision tower (fields documented on `VisionConfig`)."""

    family: ClassVar[str] = "siglip_vision"
    class_token: ClassVar[bool] = False
    patch_bias: ClassVar[bool] = True
    pre_norm: ClassVar[bool] = False
    post_norm: ClassVar[bool] = True
    hf_model_types: ClassVar[tuple[str, str]] = ("siglip_vision_model", "siglip")
    hf_defaults: ClassVar[Mapping[str, Any]] = {
        **HF_DEFAULTS, "patch_size": 16, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh",
    }
