"""CLIP's vision tower as a family: `config.py` (the config of the shared ViT tower, `models/vit.py`,
with this tower's choices), `checkpoint.py` (its Hugging Face tensor names)."""

from jaxinterp.models.clip_vision import checkpoint
from jaxinterp.models.clip_vision.config import ClipVisionConfig
from jaxinterp.models.vit import tower_family

from_hf_config = ClipVisionConfig.from_hf_config
FAMILY = tower_family(ClipVisionConfig, checkpoint)

__all__ = ["FAMILY", "ClipVisionConfig", "from_hf_config"]
