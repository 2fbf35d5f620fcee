"""The LLaVA family (a vision tower, a projector and any text family's decoder): `model.py`
(config and Flax model), `hf_config.py` (Hugging Face config.json), `checkpoint.py` (tensor
names). Its parts are other families, looked up through the registry."""

from jaxinterp.models.family import Family
from jaxinterp.models.llava import checkpoint
from jaxinterp.models.llava.hf_config import from_hf_config
from jaxinterp.models.llava.model import Llava, LlavaConfig, splice

FAMILY = Family(config=LlavaConfig, hf_configs={"llava": from_hf_config}, checkpoint=checkpoint)

__all__ = ["FAMILY", "Llava", "LlavaConfig", "from_hf_config", "splice"]
