"""Memory per device of a model on a mesh, from shapes alone: no weights read, no devices needed.

    jaxinterp plan llava-1.5-7b --mesh 4x2 --strategy fsdp --prefill 2048 --cache 4096

For a config (from a checkpoint folder's config.json, a GGUF file's metadata, or one of
`NAMED_SIZES`), a mesh shape and a sharding strategy, `plan` reports the bytes each device
holds for

- the parameters, split exactly as `jaxinterp.shard` would split them (`parameter_specs`),
- a prefill of `batch` x `prefill` text tokens (a vision-language model's image tokens count
  among them; its vision tower is not run in the estimate): the peak of simultaneously live values of the
  traced forward (a liveness pass over its jaxpr, `sweep.peak_bytes`), divided over the
  devices that split the batch; under `fsdp` one block's parameters, gathered for use, are
  added. An estimate: XLA may fuse values away (less) or keep workspace (more).
- the KV cache of `batch` x `cache` slots, split over the batch axes (and over the tensor
  axis by key/value head under `tensor`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp import models
from jaxinterp.converters import flatten
from jaxinterp.errors import ArgumentError
from jaxinterp.model import Model
from jaxinterp.sharding import parameter_specs
from jaxinterp.sweep import peak_bytes

# Hugging Face config.json contents of sizes users plan for (shapes only; no weights implied).
NAMED_SIZES: dict[str, dict[str, Any]] = {
    "llama-2-7b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                   "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
    "llava-1.5-7b": {
        "model_type": "llava", "image_token_index": 32000, "projector_hidden_act": "gelu",
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "text_config": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                        "vocab_size": 32064, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336,
                          "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
                          "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
                          "layer_norm_eps": 1e-5},
    },
    "llada-8b": {"model_type": "llada", "d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32,
                 "mlp_hidden_size": 12288, "vocab_size": 126464, "embedding_size": 126464,
                 "max_sequence_length": 4096, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
                 "mask_token_id": 126336},
    "qwen2-7b": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                 "max_position_embeddings": 32768, "rms_norm_eps": 1e-6},
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Bytes per device of a model on a mesh (see the module docstring)."""

    name: str
    mesh: dict[str, int]
    strategy: str
    dtype: str
    parameters: int
    parameter_bytes: int
    parameter_bytes_per_device: int
    prefill_tokens: tuple[int, int]
    prefill_bytes_per_device: int
    cache_slots: tuple[int, int]
    cache_bytes_per_device: int

    @property
    def total_per_device(self) -> int:
        return self.parameter_bytes_per_device + self.prefill_bytes_per_device + self.cache_bytes_per_device

    def table(self) -> str:
        """A human-readable summary, one line per figure."""
        gib = lambda n: f"{n / 2**30:8.2f} GiB"  # noqa: E731
        mesh = "x".join(str(n) for n in self.mesh.values())
        return "\n".join([
            f"{self.name}: {self.parameters / 1e9:.2f}B parameters ({gib(self.parameter_bytes).strip()} in {self.dtype}), "
            f"mesh {mesh} ({', '.join(self.mesh)}), strategy {self.strategy}",
            f"  parameters        {gib(self.parameter_bytes_per_device)} per device",
            f"  prefill {self.prefill_tokens[0]} x {self.prefill_tokens[1]:<6d}{gib(self.prefill_bytes_per_device)} "
            f"per device (liveness estimate)",
            f"  KV cache {self.cache_slots[0]} x {self.cache_slots[1]:<5d}{gib(self.cache_bytes_per_device)} per device",
            f"  total             {gib(self.total_per_device)} per device",
        ])


def parse_mesh(text: str) -> dict[str, int]:
    """`4x2` -> {"data": 4, "model": 2}; one number -> {"data": n}; more axes are named axis0, axis1, ..."""
    if not re.fullmatch(r"\d+(x\d+)*", text) or any(int(n) < 1 for n in text.split("x")):
        raise ArgumentError(f"mesh: expected axis sizes like 8 or 4x2, found {text!r}")
    sizes = [int(n) for n in text.split("x")]
    names = ("data", "model") if len(sizes) <= 2 else tuple(f"axis{i}" for i in range(len(sizes)))
    return dict(zip(names, sizes))


def config_of(source: str) -> tuple[str, Any]:
    """(display name, family config) of a named size, a checkpoint folder or a GGUF file; reads no weights."""
    import os

    if source in NAMED_SIZES:
        return source, models.config_from_hf(NAMED_SIZES[source], source=source)
    if not os.path.exists(source):
        raise ArgumentError(f"model: {source!r} is neither a named size ({', '.join(NAMED_SIZES)}) "
                            f"nor an existing checkpoint folder or file")
    from jaxinterp.converters import open_checkpoint

    checkpoint = open_checkpoint(source)  # reads the config and tensor headers, not the tensors
    return source, models.config_from_hf(checkpoint.hf_config, source=checkpoint.description)


def _split(spec, mesh: Mapping[str, int]) -> int:
    """How many devices share one array placed with PartitionSpec `spec`."""
    count = 1
    for entry in spec:
        for axis in (entry if isinstance(entry, tuple) else (entry,)):
            count *= mesh[axis] if axis is not None else 1
    return count


def plan(source: str | Any, *, mesh: Mapping[str, int], strategy: str = "fsdp", dtype: str = "bfloat16",
         batch: int = 1, prefill: int = 2048, cache: int = 4096, axis: str | None = None) -> Plan:
    """The `Plan` of `source` (a name of `NAMED_SIZES`, a checkpoint path, or a family config)."""
    for name, value in (("batch", batch), ("prefill", prefill), ("cache", cache)):
        if not isinstance(value, int) or value < 1:
            raise ArgumentError(f"{name}: expected a positive integer, found {value!r}")
    name, config = config_of(source) if isinstance(source, str) else (type(source).__name__, source)
    decoder = config.decoder  # a vision-language model plans its decoder's cache
    itemsize = np.dtype(jnp.dtype(dtype)).itemsize
    params = models.abstract_params(config, jnp.dtype(dtype))
    specs, batch_axes = parameter_specs(config, params, mesh, strategy, axis=axis)
    flat = flatten(params)
    per_device = sum(math.prod(x.shape) * itemsize // _split(specs[p], mesh) for p, x in flat.items())
    batch_split = math.prod(mesh[a] for a in batch_axes) if batch_axes else 1
    batch_split = batch_split if batch % batch_split == 0 else 1

    tokens = jax.ShapeDtypeStruct((batch, prefill), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda p, t: Model(config, p).apply(models.make_batch(t)).logits)(params, tokens)
    activations = peak_bytes(jaxpr.jaxpr) // batch_split
    if strategy == "fsdp":
        blocks = {}
        for path, x in flat.items():
            block = re.match(r"(.*blocks_\d+)/", path)
            if block:
                blocks[block.group(1)] = blocks.get(block.group(1), 0) + math.prod(x.shape) * itemsize
        activations += max(blocks.values(), default=0)
    kv_split = batch_split * (mesh[axis or tuple(mesh)[-1]] if strategy == "tensor" else 1)
    kv = 2 * decoder.num_layers * batch * cache * decoder.num_kv_heads * decoder.head_dim * itemsize // kv_split
    return Plan(name=name, mesh=dict(mesh), strategy=strategy, dtype=dtype,
                parameters=sum(math.prod(x.shape) for x in flat.values()),
                parameter_bytes=sum(math.prod(x.shape) * itemsize for x in flat.values()),
                parameter_bytes_per_device=per_device, prefill_tokens=(batch, prefill),
                prefill_bytes_per_device=activations, cache_slots=(batch, cache), cache_bytes_per_device=kv)
