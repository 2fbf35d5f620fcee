"""Checkpoints in, parameter pytrees out.

One shared converter serves every family: a family contributes only its name map
(`models/<family>/checkpoint.py`: parameter path -> checkpoint tensor name and layout,
found through `models.registry`). This package holds the checkpoint formats' readers. The
converter checks the whole checkpoint against the map before reading data (missing,
unexpected and wrongly shaped tensors are errors that name the file and the tensor), then
reads, transforms and casts one tensor at a time, so that at most one tensor exists in two
copies at once; with a `put` that places tensors into shards, a format that can read slices
(safetensors) hands it a lazy view, and each process reads only its devices' slices. A model
is converted whole or not at all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from jaxinterp.converters.sources import Checkpoint, RenamedSource, ShardedSource, open_checkpoint
from jaxinterp.errors import CheckpointError
from jaxinterp.models import registry
from jaxinterp.models.layouts import Layout


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a/b/c': leaf}."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{path}/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b/c': leaf} -> nested dict."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def check(
    tensors: ShardedSource,
    table: Mapping[str, tuple[str, Layout]],
    expected: Mapping[str, jax.ShapeDtypeStruct],
    ignored: tuple[str, ...] = (),
) -> None:
    """Raises CheckpointError unless the checkpoint holds exactly the tensors the map needs, in the right shapes."""
    available = set(tensors.names)
    wanted = {name for name, _ in table.values()}
    for path, (name, layout) in table.items():
        if name not in available:
            raise CheckpointError(f"{tensors.path}: tensor {name}: missing (needed for parameter {path})")
        want = tuple(layout.source_shape(tuple(expected[path].shape)))
        found = tuple(tensors.shape(name))
        if found != want:
            raise CheckpointError(f"{tensors.where(name)}: tensor {name}: expected shape {want}, found {found}")
    for name in sorted(available - wanted):
        if not any(re.fullmatch(pattern, name) for pattern in ignored):
            raise CheckpointError(
                f"{tensors.where(name)}: tensor {name}: unexpected for this configuration "
                "(does config.json describe these weights?)"
            )


def _placement(names: Any, config: Any, available: set[str]) -> dict[str, Any]:
    """Name-map keyword arguments for this checkpoint: the first of the name map's `PLACEMENTS`
    (where checkpoints of different transformers versions keep the tensors, e.g. a vision
    tower's prefix) whose tensors the checkpoint holds; the first when none fits, so that
    `check` reports what is missing."""
    placements = getattr(names, "PLACEMENTS", ({},))
    for kwargs in placements:
        if all(name in available for name, _ in names.name_map(config, **kwargs).values()):
            return kwargs
    return placements[0]


def convert(
    checkpoint: Checkpoint,
    config: Any,
    expected: Mapping[str, jax.ShapeDtypeStruct],
    *,
    dtype: Any = jnp.float32,
    progress: bool = True,
    put: Callable[[str, Any, Any], Any] | None = None,
) -> dict[str, Any]:
    """Converts a checkpoint into the nested parameter dict of `config`'s family.

    Args:
      checkpoint: from `open_checkpoint`.
      config: the family config the parameters are for.
      expected: flattened parameter path -> ShapeDtypeStruct (from the model's init).
      dtype: parameter dtype of the result.
      progress: show a progress bar.
      put: `put(path, value, dtype)` places each converted tensor, e.g. straight into its shards;
        `value` may be a lazy view of the file (a format with `lazy`, such as safetensors), of
        which `put` reads only the slices it needs, casting them to `dtype`. Default: the whole
        tensor, read and cast, on the default device.
    """
    names = registry.checkpoint_names(config, checkpoint.hf_config.get("model_type"))
    tensors = checkpoint.tensors
    if hasattr(names, "canonical"):  # a format with older tensor names that the map renames
        tensors = RenamedSource(tensors, names.canonical)
    placement = _placement(names, config, set(tensors.names))
    table = names.name_map(config, **placement)
    if set(table) != set(expected):
        raise CheckpointError(  # a bug in a name map, not in the user's checkpoint
            f"name map of {config.family} does not cover the model: {sorted(set(table) ^ set(expected))[:5]}"
        )
    check(tensors, table, expected, names.ignored(config, **placement))
    params = {}
    for path, (name, layout) in tqdm(
        table.items(), desc=f"converting {os.path.basename(checkpoint.description)}", unit="tensor", disable=not progress, leave=False
    ):
        stored = tensors.lazy(name) if put is not None and hasattr(tensors, "lazy") else None
        stored = tensors.get(name) if stored is None else stored
        value = layout.apply(stored, tuple(expected[path].shape))  # a view of a lazy tensor: nothing read yet
        params[path] = jnp.array(value, dtype=dtype) if put is None else put(path, value, jnp.dtype(dtype))
        del value, stored
    return unflatten(params)


__all__ = ["Checkpoint", "check", "convert", "flatten", "open_checkpoint", "unflatten"]
