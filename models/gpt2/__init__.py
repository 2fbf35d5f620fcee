"""The GPT-2 family: `model.py` (config and Flax model), `hf_config.py` (Hugging Face
config.json), `checkpoint.py` (Hugging Face tensor names)."""

from jaxinterp.models.family import Family
from jaxinterp.models.gpt2 import checkpoint
from jaxinterp.models.gpt2.hf_config import from_hf_config
from jaxinterp.models.gpt2.model import GPT2, GPT2Config

FAMILY = Family(config=GPT2Config, hf_configs={"gpt2": from_hf_config}, checkpoint=checkpoint)

__all__ = ["FAMILY", "GPT2", "GPT2Config", "from_hf_config"]
