"""Batched perturbations: one `vmap`-ed forward over a stack of variations, in chunks.

    # ablate each of the 9 heads of layer 5 in turn: one compiled program, one call per chunk
    def ablated(batch, head):
        return model(batch, edits=ji.ScaleHead(layer=5, head=head, scale=0.0))[:, -1]
    logits = ji.sweep(ablated, model.batch(text), jnp.arange(9))        # [9, B, V]

`fn(inputs, variation)` may be any JAX-traceable function (the `Model` methods are); the
variations are a pytree whose leaves share a leading axis N (edit numbers, input masks,
coalition masks, ...). The N variations are processed in chunks: `chunk_size` when given,
else as many as fit `memory_budget` bytes by an estimate of one variation's peak memory
(spread evenly over the chunks that takes, so the last pads least), so that a large sweep
neither recompiles per variation nor exhausts memory. With a `mesh`,
each chunk's variation axis is split over all mesh devices.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxinterp.errors import ArgumentError

DEFAULT_BUDGET = 2 * 1024**3


def _size(var) -> int:
    aval = getattr(var, "aval", None)
    shape, dtype = getattr(aval, "shape", None), getattr(aval, "dtype", None)
    if shape is None or dtype is None:
        return 0
    return math.prod(shape) * np.dtype(dtype).itemsize


def peak_bytes(jaxpr) -> int:
    """Peak bytes of simultaneously live values of a jaxpr, by a liveness pass (nested jaxprs included).

    An estimate of what one call needs beyond its inputs: XLA may fuse some intermediates
    away (less) or keep workspace (more).
    """
    last_use = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for var in eqn.invars:
            if isinstance(var, jcore.Var):
                last_use[var] = i
    for var in jaxpr.outvars:
        if isinstance(var, jcore.Var):
            last_use[var] = len(jaxpr.eqns)
    live = peak = 0
    for i, eqn in enumerate(jaxpr.eqns):
        inner = max((peak_bytes(sub) for sub in jcore.jaxprs_in_params(eqn.params)), default=0)
        produced = sum(_size(v) for v in eqn.outvars)
        peak = max(peak, live + inner + produced)
        live += produced
        freed = {v for v in eqn.invars if isinstance(v, jcore.Var) and last_use.get(v) == i}
        freed |= {v for v in eqn.outvars if v not in last_use}
        live -= sum(_size(v) for v in freed if v not in jaxpr.invars)
    return peak


def parse_budget(budget: int | str) -> int:
    """Bytes of a `memory_budget` argument: an int, or a string like "2GB"."""
    if isinstance(budget, str):
        units = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
        number, unit = budget[:-2], budget[-2:].upper()
        if unit not in units:
            raise ArgumentError(f"memory_budget: expected bytes or a string like '2GB', found {budget!r}")
        return int(float(number) * units[unit])
    return int(budget)


# Compiled batched programs, keyed by the traced program's text: a sweep of the same function
# over inputs of the same shapes reuses its program even when `fn` is a fresh closure.
_PROGRAMS: collections.OrderedDict[tuple, Callable] = collections.OrderedDict()
_PROGRAM_SLOTS = 16
# Traces of functions that close over no arrays, keyed by the function and its inputs' types: a
# function object swept again over inputs of the same types (a prefix trie's level programs, which
# take the model as an input) skips tracing.
_TRACES: collections.OrderedDict[tuple, tuple] = collections.OrderedDict()


def _hoisted(fn: Callable, inputs: Any, one: Any) -> tuple[Callable, list, Any]:
    """`fn` traced once, with every array it closes over (a model's params) turned into an argument.

    Returns (batched(consts, inputs, variations), consts, jaxpr): the jitted vmap of `fn` over
    the variations' leading axis. Without hoisting, the closed-over params would be baked into
    the compiled program as constants (huge programs, slow compiles).
    """
    leaves, tree = jax.tree.flatten((inputs, one))
    signature = (fn, tree, tuple(jax.typeof(x) for x in leaves))
    if signature in _TRACES:
        _TRACES.move_to_end(signature)
        return _TRACES[signature]
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(inputs, one)
    out_tree = jax.tree.structure(out_shape)
    key = (str(closed.jaxpr), tuple((jnp.shape(c), jnp.result_type(c)) for c in closed.consts), out_tree)
    if key not in _PROGRAMS:
        jaxpr = closed.jaxpr

        def call(consts, inputs, variation):
            flat = jax.tree.leaves((inputs, variation))
            return jax.tree.unflatten(out_tree, jcore.jaxpr_as_fun(jcore.ClosedJaxpr(jaxpr, consts))(*flat))

        _PROGRAMS[key] = jax.jit(jax.vmap(call, in_axes=(None, None, 0)))
        if len(_PROGRAMS) > _PROGRAM_SLOTS:
            _PROGRAMS.popitem(last=False)
    _PROGRAMS.move_to_end(key)
    traced = _PROGRAMS[key], closed.consts, closed.jaxpr
    if not closed.consts:  # kept only where it holds no arrays (a closed-over model's params would stay alive)
        _TRACES[signature] = traced
        if len(_TRACES) > _PROGRAM_SLOTS:
            _TRACES.popitem(last=False)
    return traced


def chunk_size_for(jaxpr, budget: int | str) -> int:
    """How many variations fit `budget` bytes, from the peak memory estimate of one (its jaxpr)."""
    return max(1, parse_budget(budget) // max(peak_bytes(jaxpr), 1))


def sweep(
    fn: Callable[[Any, Any], Any],
    inputs: Any,
    variations: Any,
    *,
    chunk_size: int | None = None,
    memory_budget: int | str = DEFAULT_BUDGET,
    mesh: Mesh | None = None,
    progress: bool = True,
) -> Any:
    """`fn(inputs, v)` for every variation v, stacked along a new leading axis (see the module docstring)."""
    leaves = jax.tree.leaves(variations)
    if not leaves:
        raise ArgumentError("variations: expected a pytree of arrays with a leading variation axis, found no arrays")
    count = jnp.shape(leaves[0])[0] if jnp.ndim(leaves[0]) else None
    if count is None or any(jnp.ndim(x) == 0 or jnp.shape(x)[0] != count for x in leaves):
        raise ArgumentError(f"variations: every leaf needs the same leading axis; found shapes {[jnp.shape(x) for x in leaves]}")
    variations = jax.tree.map(jnp.asarray, variations)
    batched, consts, jaxpr = _hoisted(fn, inputs, jax.tree.map(lambda x: x[0], variations))
    size = chunk_size
    if size is None:  # as many as fit, spread evenly over the chunks that needs (the last one pads least)
        size = chunk_size_for(jaxpr, memory_budget)
        size = -(-count // -(-count // size))
    devices = mesh.size if mesh is not None else 1
    size = max(devices, -(-min(size, count) // devices) * devices)  # a multiple of the device count
    place = None
    if mesh is not None:
        sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
        place = lambda tree: jax.tree.map(lambda x: jax.device_put(x, sharding), tree)  # noqa: E731
    results = []
    for start in tqdm(range(0, count, size), desc="sweep", unit="chunk", disable=not progress or count <= size, leave=False):
        index = jnp.minimum(jnp.arange(start, start + size), count - 1)  # the last chunk repeats its final variation
        chunk = jax.tree.map(lambda x: x[index], variations)
        out = batched(consts, inputs, place(chunk) if place else chunk)
        kept = min(size, count - start)  # (copies only where a chunk was padded or chunks must be joined)
        results.append(out if kept == size else jax.tree.map(lambda x: x[:kept], out))
    return results[0] if len(results) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *results)
