"""GGUF files (llama.cpp) as Hugging Face-named tensors and a Hugging Face config.

Quantised tensors are dequantised with the `gguf` package, one tensor at a time. Names
are translated to the Hugging Face layout, and the query/key rows that llama.cpp permutes
for its interleaved rotary layout are permuted back, so the family name maps only ever
speak Hugging Face names. The tokenizer is rebuilt from the file's metadata by
transformers.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from jaxinterp.errors import CheckpointError

# llama.cpp tensor names -> Hugging Face names, for the architectures we read.
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Architectures whose q/k rows llama.cpp's converter permuted (it does so for Llama only).
_PERMUTED = {"llama"}
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}


def _hf_name(name: str) -> str | None:
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.{match.group(3)}"
    match = re.fullmatch(r"(\w+)\.(weight|bias)", name)
    if match and match.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[match.group(1)]}.{match.group(2)}"
    return None


def _unpermute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's per-head interleaving of rotary dimensions (rows of q/k)."""
    half = weights.shape[0] // heads // 2
    return weights.reshape(heads, half, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


class GGUFFile:
    """Tensors of one GGUF file under Hugging Face names: `names`, `shape(name)`, `get(name)`."""

    def __init__(self, path: str | os.PathLike):
        import gguf

        self.path = os.fspath(path)
        try:
            self._reader = gguf.GGUFReader(self.path)
        except Exception as e:  # the gguf package raises ValueError/struct errors/IndexError on bad files
            raise CheckpointError(f"{self.path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
        self.metadata = {key: self._field(key) for key in self._reader.fields}
        arch = self.metadata.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise CheckpointError(
                f"{self.path}: general.architecture: expected one of {sorted(ARCHITECTURES)}, found {arch!r}"
            )
        self.architecture = arch
        self._tensors = {}
        for tensor in self._reader.tensors:
            hf = _hf_name(tensor.name)
            if hf is None:
                raise CheckpointError(f"{self.path}: tensor {tensor.name}: not a tensor of a {arch} model")
            self._tensors[hf] = tensor

    def _field(self, key: str) -> Any:
        try:
            return self._reader.fields[key].contents()
        except Exception as e:
            raise CheckpointError(f"{self.path}: metadata field {key}: unreadable ({e})") from None

    def _meta(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def hf_config(self) -> dict[str, Any]:
        """The Hugging Face `config.json` equivalent of the file's metadata."""
        required = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")
        for key in required:
            if self._meta(key) is None:
                raise CheckpointError(f"{self.path}: metadata field {self.architecture}.{key}: missing")
        if "rope_freqs.weight" in {t.name for t in self._reader.tensors}:
            raise CheckpointError(f"{self.path}: tensor rope_freqs.weight: per-frequency rope factors are not supported")
        heads = int(self._meta("attention.head_count"))
        hidden = int(self._meta("embedding_length"))
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        vocab = self._meta("vocab_size") or (len(tokens) if tokens is not None else None)
        if vocab is None:
            vocab = self.shape("model.embed_tokens.weight")[0]
        config = {
            "model_type": self.architecture,
            "vocab_size": int(vocab),
            "hidden_size": hidden,
            "intermediate_size": int(self._meta("feed_forward_length")),
            "num_hidden_layers": int(self._meta("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(self._meta("attention.head_count_kv", heads)),
            "head_dim": int(self._meta("attention.key_length", hidden // heads)),
            "rms_norm_eps": float(self._meta("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(self._meta("rope.freq_base", 10000.0)),
            "max_position_embeddings": int(self._meta("context_length", 2048)),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "bos_token_id": self.metadata.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.metadata.get("tokenizer.ggml.eos_token_id"),
            "pad_token_id": self.metadata.get("tokenizer.ggml.padding_token_id"),
        }
        scaling = self._meta("rope.scaling.type")
        if scaling not in (None, "none"):
            if scaling != "linear":
                raise CheckpointError(
                    f"{self.path}: metadata field {self.architecture}.rope.scaling.type: "
                    f"expected none or linear, found {scaling!r}"
                )
            config["rope_scaling"] = {"rope_type": "linear", "factor": float(self._meta("rope.scaling.factor"))}
        return config

    def tokenizer(self):
        """The tokenizer described by the file's metadata (built by transformers), None if it has none."""
        from transformers import AutoTokenizer

        if "tokenizer.ggml.tokens" not in self.metadata:
            return None
        folder, name = os.path.split(os.path.abspath(self.path))
        try:
            return AutoTokenizer.from_pretrained(folder, gguf_file=name)
        except Exception as e:
            raise CheckpointError(f"{self.path}: tokenizer metadata: transformers could not build it ({e})") from None

    @property
    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in reversed(self._tensors[name].shape.tolist()))

    def get(self, name: str) -> np.ndarray:
        """One tensor, dequantised to float32 where it was quantised."""
        import gguf

        tensor = self._tensors[name]
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except Exception as e:
            raise CheckpointError(
                f"{self.path}: tensor {tensor.name}: cannot dequantise type {tensor.tensor_type!r} ({e})"
            ) from None
        values = np.asarray(values).reshape(self.shape(name))
        if self.architecture in _PERMUTED and name.endswith(("q_proj.weight", "k_proj.weight")):
            kind = "head_count" if "q_proj" in name else "head_count_kv"
            values = _unpermute(values, int(self._meta(f"attention.{kind}", self._meta("attention.head_count"))))
        return values
