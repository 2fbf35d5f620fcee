"""Path patching: the effect of one sender head through a chosen path only (Wang et al. 2022, IOI, sec. 3.1).

For each sender head the target run is repeated with every head's output (`attn.head_out`,
before the output projection, so its whole contribution) frozen to the target run, except
the sender, which takes the source run's value, and the receiver heads, which are
recomputed. With no receivers the metric of that run is the cell (sender -> logits, through
the direct path and the MLPs); with receivers, their outputs in that run are written into a
fresh target run, whose metric is the cell (sender -> receivers -> everything after them).
The sender's layer and head are array leaves of one edit (`PatchHeads`), so the grid is one
`sweep`, as in `activation_patching`, rather than a forward per sender from Python (ARENA 1.4.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jaxinterp.edits import Patch, PatchHeads
from jaxinterp.errors import ArgumentError
from jaxinterp.patching.grid import grid_for, labels, pair
from jaxinterp.patching.metrics import Metric
from jaxinterp.patching.result import PatchingResult
from jaxinterp.sweep import DEFAULT_BUDGET, sweep

FREEZABLE = ("attn.head_out", "mlp.out")


def _receiver_mask(receivers, layers: int, heads: int) -> np.ndarray:
    """[L, H] bool mask of the receiver heads, with the argument checked."""
    if isinstance(receivers, (str, bytes)) or not isinstance(receivers, Sequence):
        raise ArgumentError(f"receivers: expected None or a list of (layer, head) pairs, found {type(receivers).__name__}")
    if not receivers:
        raise ArgumentError("receivers: expected None or a non-empty list of (layer, head) pairs, found an empty list")
    mask = np.zeros((layers, heads), bool)
    for entry in receivers:
        ints = isinstance(entry, (tuple, list)) and len(entry) == 2 and all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in entry)
        if not ints:
            raise ArgumentError(f"receivers: expected (layer, head) pairs of ints, found {entry!r}")
        layer, head = int(entry[0]), int(entry[1])
        if not (0 <= layer < layers and 0 <= head < heads):
            raise ArgumentError(f"receivers: expected layer in [0, {layers}) and head in [0, {heads}), "
                                f"found ({layer}, {head})")
        mask[layer, head] = True
    return mask


def _frozen_sites(model, freeze, layers: int) -> tuple[str, ...]:
    """`freeze` as a tuple of site suffixes, checked against `FREEZABLE` and the model's blocks."""
    if isinstance(freeze, str) or not isinstance(freeze, Sequence):
        raise ArgumentError(f"freeze: expected a tuple of sites among {FREEZABLE}, found {freeze!r}")
    for site in freeze:
        if site not in FREEZABLE:
            raise ArgumentError(f"freeze: expected sites among {FREEZABLE}, found {site!r}")
        if len(model.resolve_capture(f"blocks.*.{site}")) != layers:
            raise ArgumentError(f"freeze: expected {site!r} in each of the {layers} blocks of this model, found fewer")
    return tuple(dict.fromkeys(freeze))


def path_patching(
    model, clean, corrupted, metric: Metric, *, receivers: Sequence[tuple[int, int]] | None = None,
    freeze: Sequence[str] = ("attn.head_out",), noising: bool = False, chunk_size: int | None = None,
    memory_budget: int | str = DEFAULT_BUDGET, progress: bool = False,
) -> PatchingResult:
    """The metric of the target run with each sender head patched from the source along a path only.

    Cells are a layer x head grid over sender heads (see the module docstring). A sender in a
    layer at or after every receiver's layer cannot reach a receiver (a head reads only the
    residual before its block), so its cell equals the target metric; so does a sender that
    is itself a receiver, since receivers are recomputed. With no receivers and one layer, a
    cell is `activation_patching` of that head (`site="attn.head_out"`): every frozen head
    already has its target value, and the only paths out of a last-layer head are direct
    and through its block's MLP.

    Args:
      model: a `Model`.
      clean, corrupted: inputs of one shape, differing in a few tokens.
      metric: `fn(run) -> scalar`, e.g. `patching.logit_diff(answer, wrong)`.
      receivers: None (the path ends at the logits) or (layer, head) pairs whose outputs carry
        the sender's effect on (e.g. the name movers of IOI).
      freeze: the sites held at their target values in the sender's run: `attn.head_out` (every
        head but the sender and receivers) and, added, `mlp.out` (every MLP, which then stops
        passing the sender's effect on: only head-to-head paths remain). MLPs are recomputed by
        default, as in Wang et al. and ARENA.
      noising: patch corrupted values into the clean run instead.
      chunk_size, memory_budget, progress: passed to `sweep`.
    """
    clean, corrupted = pair(model, clean, corrupted)
    source, target = (corrupted, clean) if noising else (clean, corrupted)
    grid = grid_for(model, target, "attn.head_out", None)
    free = np.zeros((grid.layers, grid.heads), bool) if receivers is None else \
        _receiver_mask(receivers, grid.layers, grid.heads)
    frozen = _frozen_sites(model, freeze, grid.layers)
    heads = grid.site_names()
    mlps = [f"blocks.{layer}.mlp.out" for layer in range(grid.layers)]
    source_run = model.run(source, capture=heads)
    target_run = model.run(target, capture=heads + (mlps if "mlp.out" in frozen else []))
    source_values = jnp.stack([source_run[name] for name in heads])
    held = []
    if "attn.head_out" in frozen:
        held.append(PatchHeads("attn.head_out", jnp.stack([target_run[name] for name in heads]), ~free))
    if "mlp.out" in frozen:
        held.extend(Patch(name, target_run[name]) for name in mlps)
    written = [(f"blocks.{layer}.attn.head_out", np.flatnonzero(free[layer])) for layer in range(grid.layers)
               if free[layer].any()]

    def patched(batch, cell):
        sender = (jnp.arange(grid.layers)[:, None] == cell["layer"]) & (jnp.arange(grid.heads) == cell["head"])
        edits = (*held, PatchHeads("attn.head_out", source_values, sender & ~free))
        if receivers is None:
            return metric(model.run(batch, edits=edits))
        run = model.run(batch, edits=edits, capture=[name for name, _ in written])
        return metric(model.run(batch, edits=[Patch(name, run[name], heads=jnp.asarray(h)) for name, h in written]))

    out = sweep(patched, target, grid.cells(), chunk_size=chunk_size, memory_budget=memory_budget, progress=progress)
    source_value, target_value = float(metric(source_run)), float(metric(target_run))
    clean_value, corrupted_value = (target_value, source_value) if noising else (source_value, target_value)
    direction = "corrupted into clean" if noising else "clean into corrupted"
    ends = "logits" if receivers is None else "receivers " + ", ".join(f"{l}.{h}" for l, h in zip(*np.nonzero(free)))
    return PatchingResult(
        values=np.asarray(out, np.float32).reshape(grid.shape), axes=grid.axes, labels=labels(model, clean, grid),
        site="attn.head_out", metric=getattr(metric, "label", "metric"), clean=clean_value, corrupted=corrupted_value,
        method=f"path patching ({direction}) to {ends}",
    )
