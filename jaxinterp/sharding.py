"""Spreading a model over devices: data, FSDP and tensor (Megatron) parallelism.

`shard(model, mesh, strategy)` returns a `Model` whose parameters carry `NamedSharding`s on
`mesh` and whose batches are placed on it; `__call__`, `run`, `grad` and `generate` then run
unchanged: XLA's partitioner (GSPMD) splits the jitted programs according to those shardings.

- `data`: parameters replicated, the batch axis split over every mesh axis.
- `fsdp`: every parameter split along its largest axis divisible by the mesh size (gathered
  by XLA when used), the batch axis split over every mesh axis.
- `tensor`: Megatron-style column/row split over `axis` (default: the last mesh axis) — q/k/v
  and gate/up projections by output (heads, MLP width), the attention output and down
  projections by input — with the batch split over the remaining mesh axes. The family
  declares which parameter splits how (`config.tensor_parallel_rules()`).

Multi-host (e.g. a Cloud TPU slice): call `jax.distributed.initialize()` first in every
process (one per host), build the mesh from `jax.devices()` (all hosts' devices), load the
model in every process, then shard it; see `experiments/tpu_slice.py`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxinterp.converters import flatten, unflatten
from jaxinterp.errors import ArgumentError
from jaxinterp.model import Model

STRATEGIES = ("data", "fsdp", "tensor")


def _fsdp_spec(shape: tuple[int, ...], axes: tuple[str, ...], size: int) -> PartitionSpec:
    """Split the largest dimension divisible by `size`; replicate when none is."""
    candidates = [i for i in np.argsort(shape)[::-1] if shape[i] % size == 0 and shape[i] >= size]
    if not candidates:
        return PartitionSpec()
    spec = [None] * len(shape)
    spec[candidates[0]] = axes
    return PartitionSpec(*spec)


def _tensor_spec(path: str, shape: tuple[int, ...], rules: dict[str, int], axis: str) -> PartitionSpec:
    """The split dimension of `path` per the family's rules (replicated when no rule matches)."""
    for pattern, dim in rules.items():
        if re.fullmatch(pattern, path):
            spec = [None] * len(shape)
            spec[dim] = axis
            return PartitionSpec(*spec)
    return PartitionSpec()


def _check_tensor_axis(config, size: int, axis: str) -> None:
    for name, count in (("num_heads", config.num_heads), ("num_kv_heads", config.num_kv_heads),
                        ("intermediate_size", config.intermediate_size)):
        if count % size:
            raise ArgumentError(
                f"mesh: axis {axis!r} of size {size} must divide {name}={count} for tensor parallelism"
            )


def parameter_specs(config, params, mesh_shape: Mapping[str, int], strategy: str = "data", *,
                    axis: str | None = None) -> tuple[dict[str, PartitionSpec], tuple[str, ...]]:
    """({flat parameter path: PartitionSpec}, the mesh axes that split the batch) of a strategy.

    Needs only the parameters' shapes (arrays or `jax.ShapeDtypeStruct`s) and the mesh's axis
    sizes, so `plan` can size a model without devices or weights.
    """
    if strategy not in STRATEGIES:
        raise ArgumentError(f"strategy: expected one of {STRATEGIES}, found {strategy!r}")
    names = tuple(mesh_shape)
    flat = flatten(params)
    if strategy == "tensor":
        axis = axis or names[-1]
        if axis not in names:
            raise ArgumentError(f"axis: expected one of the mesh axes {names}, found {axis!r}")
        _check_tensor_axis(config, mesh_shape[axis], axis)
        rules = config.tensor_parallel_rules()
        return {p: _tensor_spec(p, x.shape, rules, axis) for p, x in flat.items()}, tuple(n for n in names if n != axis)
    size = math.prod(mesh_shape.values())
    return {p: PartitionSpec() if strategy == "data" else _fsdp_spec(x.shape, names, size)
            for p, x in flat.items()}, names


def shard(model: Model, mesh: Mesh, strategy: str = "data", *, axis: str | None = None) -> Model:
    """A copy of `model` whose parameters and batches are sharded over `mesh` (see the module docstring)."""
    specs, batch_axes = parameter_specs(model.config, model.params, dict(mesh.shape), strategy, axis=axis)
    params = unflatten({
        p: jax.device_put(x, NamedSharding(mesh, specs[p])) for p, x in flatten(model.params).items()
    })
    return model.replace(params=params, placement=Placement(mesh, batch_axes))


class Placement:
    """Where a sharded model puts its batches: the batch axis split over `batch_axes` when it divides."""

    def __init__(self, mesh: Mesh, batch_axes: tuple[str, ...]):
        self.mesh = mesh
        self.batch_axes = batch_axes
        self.size = math.prod(mesh.shape[a] for a in batch_axes) if batch_axes else 1

    def __call__(self, tree):
        """Places every array of `tree` whose leading axis is the batch axis."""
        def place(x):
            if not hasattr(x, "ndim") or x.ndim == 0:
                return x
            split = self.batch_axes if self.size > 1 and x.shape[0] % self.size == 0 else None
            return jax.device_put(x, NamedSharding(self.mesh, PartitionSpec(split, *([None] * (x.ndim - 1)))))

        return jax.tree.map(place, tree)
