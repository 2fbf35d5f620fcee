"""The Llama family (Llama 2/3, SmolLM2, Mistral, Qwen2, and LLaDA's masked-diffusion LMs).

`model.py` is the config and the Flax model, `hf_config.py` reads a Hugging Face config.json,
`checkpoint.py` names the Hugging Face tensors, `llada.py` reads LLaDA's config and tensor
names, `gguf.py` names llama.cpp's tensors.
"""

from jaxinterp.models.family import Family
from jaxinterp.models.llama import checkpoint, gguf, llada
from jaxinterp.models.llama.hf_config import HF_MODEL_TYPES, from_hf_config
from jaxinterp.models.llama.llada import from_llada_config
from jaxinterp.models.llama.model import Block, Llama, LlamaConfig

FAMILY = Family(
    config=LlamaConfig,
    hf_configs={**{model_type: from_hf_config for model_type in HF_MODEL_TYPES}, "llada": from_llada_config},
    checkpoint=checkpoint,
    formats={"llada": llada},
    gguf=gguf.ARCHITECTURES,
)

__all__ = ["FAMILY", "Block", "Llama", "LlamaConfig", "from_hf_config", "from_llada_config"]
