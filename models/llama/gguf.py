"""llama.cpp's names for the Llama family's tensors, so a GGUF file reads as a Hugging Face
checkpoint (`converters/gguf_file.py`) and the family's one name map serves both."""

from __future__ import annotations

from jaxinterp.models.family import GGUFNames

BLOCKS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# llama.cpp's converter interleaves the rotary rows of q/k for Llama only.
ARCHITECTURES = {
    "llama": GGUFNames(model_type="llama", blocks=BLOCKS, top=TOP, permuted=True),
    "qwen2": GGUFNames(model_type="qwen2", blocks=BLOCKS, top=TOP, permuted=False),
}
