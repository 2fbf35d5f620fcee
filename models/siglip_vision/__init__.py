"""SigLIP's vision tower as a family: `config.py` (the config of the shared ViT tower, `models/vit.py`,
with this tower's choices), `checkpoint.py` (its Hugging Face tensor names)."""

from jaxinterp.models.siglip_vision import checkpoint
from jaxinterp.models.siglip_vision.config import SiglipVisionConfig
from jaxinterp.models.vit import tower_family

from_hf_config = SiglipVisionConfig.from_hf_config
FAMILY = tower_family(SiglipVisionConfig, checkpoint)

__all__ = ["FAMILY", "SiglipVisionConfig", "from_hf_config"]
