"""Hugging Face LLaVA config.json -> `LlavaConfig` (its vision and text configs built by
their own families through the registry)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxinterp.errors import ConfigError
from jaxinterp.models import registry
from jaxinterp.models.llava.model import LlavaConfig


def from_hf_config(hf: Mapping[str, Any], *, source: str = "config.json") -> LlavaConfig:
    """A `LlavaConfig` from a Hugging Face `LlavaForConditionalGeneration` config.json."""
    layer = hf.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise ConfigError(f"{source}: vision_feature_layer: expected one integer, found {layer!r}")
    for part in ("vision_config", "text_config"):
        if not isinstance(hf.get(part), Mapping):
            raise ConfigError(f"{source}: {part}: expected an object, found {hf.get(part)!r}")
    text = dict(hf["text_config"])
    text.setdefault("model_type", "llama")
    vision = registry.config_from_hf({"model_type": "clip_vision_model", **hf["vision_config"]}, source=f"{source} (vision_config)")
    return LlavaConfig(
        vision=vision,
        text=registry.config_from_hf(text, source=f"{source} (text_config)"),
        image_token_id=int(hf.get("image_token_index", hf.get("image_token_id", 32000))),
        feature_layer=layer,
        select_strategy=hf.get("vision_feature_select_strategy", "default"),
        projector_activation=hf.get("projector_hidden_act", "gelu"),
        projector_bias=bool(hf.get("multimodal_projector_bias", True)),
    )
