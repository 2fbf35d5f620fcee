"""Tiny random Hugging Face models of every supported layout, for parity tests.

Weights are redrawn with a larger scale than transformers' default init so that the
logits are O(1-10) and a layout mistake cannot hide below the tolerance.
"""

from __future__ import annotations

import torch
import transformers

COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, max_position_embeddings=128)

CONFIGS = {
    # SmolLM2-like: GQA, tied embeddings, plain rope (also written to GGUF by tests/gguf_tiny.py).
    "smol": lambda: transformers.LlamaConfig(
        **COMMON, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=100000.0,
    ),
    # Llama 3 with llama3 rope scaling (bands relative to a short original context), GQA, untied.
    "llama3": lambda: transformers.LlamaConfig(
        **COMMON, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    ),
    # explicit head_dim != hidden/heads, multi-query attention, tied embeddings, every bias.
    "llama_head_dim": lambda: transformers.LlamaConfig(
        **COMMON, num_attention_heads=4, num_key_value_heads=1, head_dim=24, tie_word_embeddings=True,
        attention_bias=True, mlp_bias=True,
    ),
    # Mistral with a sliding window shorter than the test sequence.
    "mistral_window": lambda: transformers.MistralConfig(
        **COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
        tie_word_embeddings=False,
    ),
    # Qwen2: q/k/v biases, tied embeddings.
    "qwen2": lambda: transformers.Qwen2Config(
        **COMMON, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    ),
    # Qwen2 with the window on the upper layers only.
    "qwen2_window_layers": lambda: transformers.Qwen2Config(
        **{**COMMON, "num_hidden_layers": 3}, num_attention_heads=4, num_key_value_heads=4,
        use_sliding_window=True, sliding_window=3, max_window_layers=1, tie_word_embeddings=False,
    ),
}


CONFIGS["gpt2"] = lambda: transformers.GPT2Config(
    vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64, n_inner=None, bos_token_id=0, eos_token_id=1,
)


def build(kind: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A tiny random `*ForCausalLM` of the given kind, in fp32 eager attention, eval mode."""
    torch.manual_seed(seed)
    config = CONFIGS[kind]()
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    return redraw(model)


def redraw(model: transformers.PreTrainedModel) -> transformers.PreTrainedModel:
    """The model with every weight redrawn at the larger test scale (norm scales near 1, norm biases near 0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15 if p.ndim > 1 else 0.1)
    return model


def reference_logits(model, tokens, mask):
    """fp32 logits of the PyTorch model for numpy token ids / mask."""
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(tokens).long(), attention_mask=torch.as_tensor(mask).long())
    return out.logits.float().numpy()
