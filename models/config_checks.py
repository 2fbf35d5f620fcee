"""One validation of model configs, shared by every source (HF config.json, GGUF metadata, a manifest).

Two passes, both naming the file and the key, what was expected and what was found:

- `check_hf` reads the raw Hugging Face dictionary (a GGUF file's metadata arrives here as
  one, via `GGUFFile.hf_config`) before a family builds from it: every numeric key a family
  reads must have the right type, so `"64"`, `true` or `64.5` never turn silently into a size.
  Sizes are integers; a float is accepted only when integral (`64.0`, as some exporters write),
  since it names the same size. `null` means "use the default", as in transformers.
- `check_config` checks the built family config (also the one rebuilt from a converted
  directory's manifest): sizes within generous limits, epsilons and rotary settings finite
  and positive, windows of at least one token, window layers inside the model, GQA heads
  that divide, even rotary head widths, and a mask token inside the vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from jaxinterp.errors import ConfigError, shown
from jaxinterp.models.family import FamilyConfig

# HF keys the families read, by kind (nested rope dicts and text/vision sub-configs included).
HF_SIZES = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "original_max_position_embeddings",
    "sliding_window", "n_embd", "n_layer", "n_head", "n_positions", "n_inner", "image_size", "patch_size",
    "num_channels", "d_model", "n_heads", "n_layers", "n_kv_heads", "mlp_hidden_size", "embedding_size",
    "max_sequence_length",
)
HF_COUNTS = ("max_window_layers",)  # non-negative integers
HF_POSITIVE_REALS = (
    "rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "rope_theta", "factor", "low_freq_factor",
    "high_freq_factor", "partial_rotary_factor", "mlp_ratio",
)
HF_NESTED = ("rope_scaling", "rope_parameters", "text_config", "vision_config")

# Generous bounds on sizes: a file asking for more is hostile or broken, and without a bound
# building its parameter shapes would hang before any tensor is compared.
SIZE_LIMITS = {"num_layers": 1024, "num_heads": 1024, "num_kv_heads": 1024, "hidden_size": 1 << 16,
               "intermediate_size": 1 << 20, "head_dim": 4096, "vocab_size": 1 << 22, "image_size": 8192,
               "patch_size": 8192, "num_channels": 64, "num_experts": 1024, "top_k": 1024,
               "max_position_embeddings": 1 << 31, "sliding_window": 1 << 31, "original_max_position": 1 << 31}
TOKEN_IDS = ("mask_token_id",)  # ids a sampler writes into its inputs: inside the vocabulary


def _fail(source: str, key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{source}: {key}: expected {expected}, found {shown(repr(value))}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_hf(hf: Mapping[str, Any], *, source: str) -> None:
    """Raises ConfigError for a numeric key of a config.json dictionary with the wrong type or range."""
    for key in HF_SIZES + HF_COUNTS:
        value = hf.get(key)
        low = 0 if key in HF_COUNTS else 1
        if value is not None and not (_is_number(value) and math.isfinite(value) and value == int(value) >= low):
            raise _fail(source, key, f"an integer >= {low}", value)
    for key in HF_POSITIVE_REALS:
        value = hf.get(key)
        if value is not None and not (_is_number(value) and 0 < value < math.inf):
            raise _fail(source, key, "a finite number > 0", value)
    for key in HF_NESTED:
        nested = hf.get(key)
        if nested is not None and not isinstance(nested, Mapping):
            raise _fail(source, key, "an object", nested)
        if nested:
            check_hf(nested, source=f"{source}: {key}")


def check_config(config: Any, *, source: str) -> None:
    """Raises ConfigError when a field of a family config (or of its nested configs) is out of range."""
    fields = vars(config)
    for name, value in fields.items():
        if isinstance(value, FamilyConfig):
            check_config(value, source=source)
        elif name in SIZE_LIMITS and value is not None and not (
                type(value) is int and 1 <= value <= SIZE_LIMITS[name]):
            raise _fail(source, name, f"an integer in 1..{SIZE_LIMITS[name]}", value)
        elif name.endswith("_eps") and not (_is_number(value) and 0 < value < math.inf):
            raise _fail(source, name, "a finite number > 0", value)
        elif name in TOKEN_IDS and value is not None and not (type(value) is int and 0 <= value < config.vocab_size):
            raise _fail(source, name, f"a token id in [0, {config.vocab_size})", value)
    if "rope" in fields:
        _check_rope(config.rope, config.head_dim, source)
    heads, kv_heads = fields.get("num_heads"), fields.get("num_kv_heads")
    if kv_heads is not None and heads % kv_heads:
        raise _fail(source, "num_kv_heads", f"a divisor of num_heads={heads}", kv_heads)
    layers = fields.get("window_layers")
    if layers is not None and not all(type(i) is int and 0 <= i < config.num_layers for i in layers):
        raise _fail(source, "window_layers", f"block indices in [0, {config.num_layers})", layers)


def _check_rope(rope: Any, head_dim: int, source: str) -> None:
    for name in ("theta", "factor", "low_freq_factor", "high_freq_factor"):
        value = getattr(rope, name)
        if not (_is_number(value) and 0 < value < math.inf):
            raise _fail(source, f"rope {name}", "a finite number > 0", value)
    if rope.kind == "llama3" and not rope.high_freq_factor > rope.low_freq_factor:
        raise _fail(source, "rope high_freq_factor", f"more than low_freq_factor={rope.low_freq_factor}",
                    rope.high_freq_factor)
    if head_dim % 2:
        raise _fail(source, "head_dim", "an even width (rotary dimensions come in pairs)", head_dim)
