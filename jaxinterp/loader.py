"""One loader: `load(source)` for built-in names, checkpoints, GGUF files, converted directories.

    load("smollm2")                    the embedded default (converted once, then cached)
    load("path/to/hf_checkpoint_dir")  config.json + safetensors / sharded / pytorch_model.bin
    load("model.gguf")                 dequantised, tokenizer from the file's metadata
    load("converted_dir")              written by `jaxinterp convert` (no torch needed)
    load(torch_model)                  an in-memory transformers model

and `save(model, dir)` writes any model (converted or trained) as a directory `load` restores.
Loading is all or nothing: every tensor is checked against the config before data is read.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxinterp import cache, models
from jaxinterp.converters import convert as convert_checkpoint
from jaxinterp.converters import flatten, open_checkpoint, orbax_dir, unflatten
from jaxinterp.converters.tokenizers import load_tokenizer
from jaxinterp.errors import ArgumentError
from jaxinterp.images import ImageProcessor, load_image_processor
from jaxinterp.model import Model
from jaxinterp.sharding import parameter_specs, shard

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dtype(dtype: str | Any) -> Any:
    name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ArgumentError(f"dtype: expected one of {sorted(DTYPES)}, found {dtype!r}")
    return DTYPES[name]


class _Layout:
    """Where loaded parameters go: the default device, or straight into their shards on a mesh."""

    def __init__(self, mesh: Mesh | None, strategy: str, axis: str | None):
        self.mesh, self.strategy, self.axis = mesh, strategy, axis

    def shardings(self, config: Any, abstract: Any) -> dict[str, NamedSharding] | None:
        """{flat parameter path: NamedSharding} of `config`'s parameters (None without a mesh)."""
        if self.mesh is None:
            return None
        specs, _ = parameter_specs(config, abstract, dict(self.mesh.shape), self.strategy, axis=self.axis)
        return {path: NamedSharding(self.mesh, spec) for path, spec in specs.items()}

    def finish(self, model: Model) -> Model:
        """The model with its batches placed on the mesh (its parameters already are)."""
        return model if self.mesh is None else shard(model, self.mesh, self.strategy, axis=self.axis)


def read_slice(value: Any, index: tuple[slice, ...], dtype: Any) -> np.ndarray:
    """`value[index]` in `dtype`, its own copy (of a lazy view: read from the file here)."""
    return np.asarray(value[index]).astype(dtype)


def place(value: Any, sharding: NamedSharding, dtype: Any) -> jax.Array:
    """`value` (an array or a lazy view of a checkpoint file) as a global array with `sharding`,
    reading only the slices of this process's devices (each distinct slice once)."""
    slices: dict[str, np.ndarray] = {}

    def shard(index: tuple[slice, ...]) -> np.ndarray:
        key = repr(index)  # slices are not hashable before Python 3.12
        if key not in slices:
            slices[key] = read_slice(value, index, dtype)
        return slices[key]

    return jax.make_array_from_callback(tuple(value.shape), sharding, shard)


def _from_checkpoint(source: Any, dtype: Any, progress: bool, layout: _Layout | None = None) -> Model:
    """A model converted in memory from a checkpoint (with its tokenizer and image processor)."""
    layout = layout or _Layout(None, "data", None)
    checkpoint = open_checkpoint(source)
    config = models.config_from_hf(checkpoint.hf_config, source=checkpoint.config_source or checkpoint.description)
    expected = flatten(models.abstract_params(config, dtype))
    shardings = layout.shardings(config, unflatten(expected))
    put = None if shardings is None else (lambda path, value, dtype: place(value, shardings[path], dtype))
    params = convert_checkpoint(checkpoint, config, expected, dtype=dtype, progress=progress, put=put)
    processor = None
    if isinstance(source, (str, os.PathLike)):
        processor = load_image_processor(source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source)))
    return layout.finish(Model(config, params, checkpoint.load_tokenizer(), source=checkpoint.description,
                               processor=processor))


def save(model: Model, destination: str | os.PathLike, *, source: str | None = None, source_hash: str | None = None) -> str:
    """Writes a model (for example one trained with jaxinterp) as a directory that `load` restores.

    The directory holds an orbax checkpoint of the parameters, the config, the tokenizer, the
    image processor, the provenance and the digests of its files (see
    `jaxinterp.converters.orbax_dir`); it is written atomically.
    """
    with orbax_dir.writing(destination) as staging:
        _write(model, staging, source=source, source_hash=source_hash)
    return os.fspath(destination)


def _write(model: Model, staging: str, *, source: str | None, source_hash: str | None) -> None:
    dtypes = {x.dtype for x in jax.tree.leaves(model.params)}
    manifest = {
        **models.config_to_dict(model.config),
        "dtype": jnp.dtype(dtypes.pop()).name if len(dtypes) == 1 else "float32",
        "source": source or model.source,
        "source_hash": source_hash,
        "library_version": cache.library_version(),
        "image_processor": None if model.processor is None else dataclasses.asdict(model.processor),
    }
    orbax_dir.write(staging, model.params, manifest, model.tokenizer)


def convert(source: Any, destination: str | os.PathLike, *, dtype: str = "float32", progress: bool = True,
            source_hash: str | None = None) -> str:
    """Converts a checkpoint into a directory that `load` restores without torch (see `save`); the
    destination is checked before the conversion starts."""
    dtype = _dtype(dtype)
    with orbax_dir.writing(destination) as staging:
        model = _from_checkpoint(source, dtype, progress)
        described = os.path.abspath(source) if isinstance(source, (str, os.PathLike)) else model.source
        _write(model, staging, source=described, source_hash=source_hash)
    return os.fspath(destination)


def _restore(path: str, dtype: Any, layout: _Layout, verify: bool) -> Model:
    manifest = orbax_dir.read_manifest(path)
    config = models.config_from_dict(manifest, source=os.path.join(path, orbax_dir.MANIFEST))
    if verify:  # after the config checks, which name a bad field before any parameter file is read
        orbax_dir.verify(path, manifest)
    saved = models.abstract_params(config, jnp.dtype(manifest["dtype"]))
    # orbax restores each device's shards only; without a mesh, the whole model onto this process's
    # first device (said explicitly: on a multi-host run orbax would otherwise expect the topology
    # the directory was written with)
    shardings = layout.shardings(config, saved) or {}
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    saved = unflatten({name: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings.get(name, local))
                       for name, x in flatten(saved).items()})
    params = orbax_dir.restore(path, saved)
    if jnp.dtype(manifest["dtype"]) != jnp.dtype(dtype):
        params = jax.tree.map(lambda x: x.astype(dtype), params)
    folder = orbax_dir.tokenizer_dir(path)
    fields = manifest.get("image_processor")
    processor = None if fields is None else ImageProcessor(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    return layout.finish(Model(config, params, source=manifest.get("source", path), processor=processor,
                               load_tokenizer=(lambda: load_tokenizer(folder)) if folder else None))


def load(source: Any = "smollm2", *, dtype: str = "float32", progress: bool = True, mesh: Mesh | None = None,
         strategy: str = "fsdp", axis: str | None = None, verify: bool = True) -> Model:
    """Loads a model (see the module docstring); `dtype` is `float32` or `bfloat16`.

    A converted directory (and a cache entry) is first checked against the digests of its
    files; `verify=False` skips that check, for a user who accepts a damaged directory.

    With `mesh`, every parameter goes straight into its shards as it is converted or restored
    (`strategy` and `axis` as in `jaxinterp.shard`), so no device and no second host copy ever
    holds the whole model: the result equals `shard(load(source), mesh, strategy)`.
    """
    dtype = _dtype(dtype)
    layout = _Layout(mesh, strategy, axis)
    if isinstance(source, str) and source in cache.BUILTINS:
        def build(src: str, dst: str, source_hash: str) -> None:
            convert(src, dst, progress=progress, source_hash=source_hash)

        return _restore(cache.cached_conversion(source, build), dtype, layout, verify).replace(source=source)
    if isinstance(source, (str, os.PathLike)) and orbax_dir.is_converted(source):
        return _restore(os.fspath(source), dtype, layout, verify)
    return _from_checkpoint(source, dtype, progress, layout)
