"""GGUF files (llama.cpp) as Hugging Face-named tensors and a Hugging Face config.

The header is parsed and checked in full first (`gguf_header`), and the sizes the config
is built from must agree with the tensors in the file. Quantised tensors are then read from
a memory map and dequantised with the `gguf` package, one tensor at a time. Names
are translated to the Hugging Face layout (each architecture's table is its family's:
`models/llama/gguf.py`), and the query/key rows that llama.cpp permutes
for its interleaved rotary layout are permuted back, so the family name maps only ever
speak Hugging Face names. The tokenizer is rebuilt from the parsed metadata
(`gguf_tokenizer`), without torch.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np

from jaxinterp.converters.gguf_header import TensorInfo, read_header
from jaxinterp.converters.gguf_tokenizer import gguf_tokenizer
from jaxinterp.errors import CheckpointError, shown
from jaxinterp.models import registry
from jaxinterp.models.family import GGUFNames

def _hf_name(name: str, names: GGUFNames) -> str | None:
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
    if match and match.group(2) in names.blocks:
        return f"model.layers.{match.group(1)}.{names.blocks[match.group(2)]}.{match.group(3)}"
    match = re.fullmatch(r"(\w+)\.(weight|bias)", name)
    if match and match.group(1) in names.top:
        return f"{names.top[match.group(1)]}.{match.group(2)}"
    return None


def _unpermute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's per-head interleaving of rotary dimensions (rows of q/k)."""
    half = weights.shape[0] // heads // 2
    return weights.reshape(heads, half, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


class GGUFFile:
    """Tensors of one GGUF file under Hugging Face names: `names`, `shape(name)`, `get(name)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if os.path.getsize(self.path) == 0:
            raise CheckpointError(f"{self.path}: magic: expected b'GGUF' (a GGUF file), found an empty file")
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        header = read_header(self.path, self._data)
        self.metadata = header.metadata
        arch = self.metadata.get("general.architecture")
        architectures = registry.gguf_names()
        if not isinstance(arch, str) or arch not in architectures:
            raise CheckpointError(
                f"{self.path}: metadata field general.architecture: expected one of {sorted(architectures)}, "
                f"found {shown(repr(arch))}"
            )
        self.architecture, self._names = arch, architectures[arch]
        self._tensors: dict[str, TensorInfo] = {}
        for tensor in header.tensors.values():
            if tensor.name == "rope_freqs.weight":
                raise CheckpointError(f"{self.path}: tensor rope_freqs.weight: per-frequency rope factors are not supported")
            hf = _hf_name(tensor.name, self._names)
            if hf is None:
                raise CheckpointError(f"{self.path}: tensor {tensor.name}: not a tensor of a {arch} model")
            self._tensors[hf] = tensor
        self._largest = max((d for t in self._tensors.values() for d in t.dims), default=1)

    def _fail(self, key: str, expected: str, value: Any) -> CheckpointError:
        return CheckpointError(f"{self.path}: metadata field {key}: expected {expected}, found {shown(repr(value))}")

    def _size(self, key: str, default: int | None = None, *, largest: int | None = None) -> int:
        """A positive integer `{arch}.{key}`, at most `largest` (default: the largest tensor dimension,
        so that no size read from the file can make the model larger than the file)."""
        full = f"{self.architecture}.{key}"
        value = self.metadata.get(full, default)
        largest = self._largest if largest is None else largest
        if value is None:
            raise CheckpointError(f"{self.path}: metadata field {full}: missing")
        if type(value) is not int or not 1 <= value <= largest:
            raise self._fail(full, f"an integer in [1, {largest}]", value)
        return value

    def _real(self, key: str, default: float) -> float:
        """A finite positive number `{arch}.{key}`."""
        full = f"{self.architecture}.{key}"
        value = self.metadata.get(full, default)
        if type(value) not in (int, float) or not 0 < value < math.inf:
            raise self._fail(full, "a finite positive number", value)
        return float(value)

    def _token_id(self, key: str) -> int | None:
        value = self.metadata.get(key)
        if value is not None and (type(value) is not int or value < 0):
            raise self._fail(key, "a non-negative integer", value)
        return value

    def hf_config(self) -> dict[str, Any]:
        """The Hugging Face `config.json` equivalent of the file's metadata, checked against its tensors."""
        blocks = {name.split(".")[2] for name in self._tensors if name.startswith("model.layers.")}
        heads = self._size("attention.head_count")
        hidden = self._size("embedding_length")
        head_dim = self._size("attention.key_length", max(hidden // heads, 1))
        if head_dim % 2:
            raise self._fail(f"{self.architecture}.attention.key_length", "an even head size (rotary pairs)", head_dim)
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        embed = self._tensors.get("model.embed_tokens.weight")
        vocab = self._size("vocab_size", len(tokens) if isinstance(tokens, list) else embed.shape[0] if embed else None)
        config = {
            "model_type": self._names.model_type,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": self._size("feed_forward_length"),
            "num_hidden_layers": self._size("block_count", largest=len(blocks)),
            "num_attention_heads": heads,
            "num_key_value_heads": self._size("attention.head_count_kv", heads),
            "head_dim": head_dim,
            "rms_norm_eps": self._real("attention.layer_norm_rms_epsilon", 1e-6),
            "rope_theta": self._real("rope.freq_base", 10000.0),
            "max_position_embeddings": self._size("context_length", 2048, largest=2**31 - 1),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "bos_token_id": self._token_id("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self._token_id("tokenizer.ggml.eos_token_id"),
            "pad_token_id": self._token_id("tokenizer.ggml.padding_token_id"),
        }
        scaling = self.metadata.get(f"{self.architecture}.rope.scaling.type")
        if scaling not in (None, "none"):
            if scaling != "linear":
                raise self._fail(f"{self.architecture}.rope.scaling.type", "none or linear", scaling)
            config["rope_scaling"] = {"rope_type": "linear", "factor": self._real("rope.scaling.factor", 1.0)}
        return config

    def tokenizer(self):
        """The tokenizer described by the file's metadata (built without torch), None if it has none."""
        if "tokenizer.ggml.tokens" not in self.metadata:
            return None
        return gguf_tokenizer(self.path, self.metadata)

    @property
    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensors[name].shape

    def get(self, name: str) -> np.ndarray:
        """One tensor, dequantised to float32 where it was quantised (read from the memory map)."""
        import gguf

        tensor = self._tensors[name]
        block, block_bytes = gguf.GGML_QUANT_SIZES[tensor.kind]
        rows = self._data[tensor.start: tensor.start + tensor.size].reshape(
            *tensor.shape[:-1], tensor.dims[0] // block * block_bytes)
        values = gguf.quants.dequantize(rows, tensor.kind).reshape(tensor.shape)
        if self._names.permuted and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = self._size("attention.head_count")
            values = _unpermute(values, heads if "q_proj" in name else self._size("attention.head_count_kv", heads))
        return values
