"""SigLIP's vision tower as a family: `config.py` (the config of the shared ViT tower, `models/vit.py`,
with this tower's choices), `checkpoint.py` (its Hugging Face tensor names)."""

from jaxinterp.models.family import Family
from jaxinterp.models.siglip_vision import checkpoint
from jaxinterp.models.siglip_vision.config import SiglipVisionConfig

from_hf_config = SiglipVisionConfig.from_hf_config
FAMILY = Family(config=SiglipVisionConfig, hf_configs=dict.fromkeys(SiglipVisionConfig.hf_model_types, from_hf_config), checkpoint=checkpoint)

__all__ = ["FAMILY", "SiglipVisionConfig", "from_hf_config"]
