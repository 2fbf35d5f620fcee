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

from jaxinterp import cache, models
from jaxinterp.converters import convert as convert_checkpoint
from jaxinterp.converters import flatten, open_checkpoint, orbax_dir
from jaxinterp.converters.tokenizers import load_tokenizer
from jaxinterp.errors import ArgumentError
from jaxinterp.images import ImageProcessor, load_image_processor
from jaxinterp.model import Model

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dtype(dtype: str | Any) -> Any:
    name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ArgumentError(f"dtype: expected one of {sorted(DTYPES)}, found {dtype!r}")
    return DTYPES[name]


def _from_checkpoint(source: Any, dtype: Any, progress: bool) -> Model:
    """A model converted in memory from a checkpoint (with its tokenizer and image processor)."""
    checkpoint = open_checkpoint(source)
    config = models.config_from_hf(checkpoint.hf_config, source=checkpoint.config_source or checkpoint.description)
    expected = flatten(models.abstract_params(config, dtype))
    params = convert_checkpoint(checkpoint, config, expected, dtype=dtype, progress=progress)
    processor = None
    if isinstance(source, (str, os.PathLike)):
        processor = load_image_processor(source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source)))
    return Model(config, params, checkpoint.load_tokenizer(), source=checkpoint.description, processor=processor)


def save(model: Model, destination: str | os.PathLike, *, source: str | None = None, source_hash: str | None = None) -> str:
    """Writes a model (for example one trained with jaxinterp) as a directory that `load` restores.

    The directory holds an orbax checkpoint of the parameters, the config, the tokenizer, the
    image processor and the provenance (see `jaxinterp.converters.orbax_dir`); it is written
    atomically.
    """
    dtypes = {x.dtype for x in jax.tree.leaves(model.params)}
    manifest = {
        **models.config_to_dict(model.config),
        "dtype": jnp.dtype(dtypes.pop()).name if len(dtypes) == 1 else "float32",
        "source": source or model.source,
        "source_hash": source_hash,
        "library_version": cache.library_version(),
        "image_processor": None if model.processor is None else dataclasses.asdict(model.processor),
    }
    orbax_dir.save(destination, model.params, manifest, model.tokenizer)
    return os.fspath(destination)


def convert(source: Any, destination: str | os.PathLike, *, dtype: str = "float32", progress: bool = True,
            source_hash: str | None = None) -> str:
    """Converts a checkpoint into a directory that `load` restores without torch (see `save`)."""
    model = _from_checkpoint(source, _dtype(dtype), progress)
    described = os.path.abspath(source) if isinstance(source, (str, os.PathLike)) else model.source
    return save(model, destination, source=described, source_hash=source_hash)


def _restore(path: str, dtype: Any) -> Model:
    manifest = orbax_dir.read_manifest(path)
    config = models.config_from_dict(manifest, source=os.path.join(path, orbax_dir.MANIFEST))
    saved = models.abstract_params(config, jnp.dtype(manifest["dtype"]))
    params = orbax_dir.restore(path, saved)
    if jnp.dtype(manifest["dtype"]) != jnp.dtype(dtype):
        params = jax.tree.map(lambda x: x.astype(dtype), params)
    folder = orbax_dir.tokenizer_dir(path)
    fields = manifest.get("image_processor")
    processor = None if fields is None else ImageProcessor(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    return Model(config, params, source=manifest.get("source", path), processor=processor,
                 load_tokenizer=(lambda: load_tokenizer(folder)) if folder else None)


def load(source: Any = "smollm2", *, dtype: str = "float32", progress: bool = True) -> Model:
    """Loads a model (see the module docstring); `dtype` is `float32` or `bfloat16`."""
    dtype = _dtype(dtype)
    if isinstance(source, str) and source in cache.BUILTINS:
        def build(src: str, dst: str, source_hash: str) -> None:
            convert(src, dst, progress=progress, source_hash=source_hash)

        model = _restore(cache.cached_conversion(source, build), dtype)
        model.source = source
        return model
    if isinstance(source, (str, os.PathLike)) and orbax_dir.is_converted(source):
        return _restore(os.fspath(source), dtype)
    return _from_checkpoint(source, dtype, progress)
