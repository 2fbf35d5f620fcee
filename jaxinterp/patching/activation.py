"""Activation patching: write one run's activations into another, cell by cell, in one sweep.

For every cell of a grid (layer x position, layer x head, ...) the corrupted run is re-run
with the clean activation written at that cell (`PatchLayer`), and a metric is read; the
reverse direction (`noising`) writes corrupted activations into the clean run. The layer,
position and head of a cell are array leaves of one edit, so the whole grid is one
compiled program, run by `sweep` in chunks sized to `memory_budget`, rather than one
forward per cell from Python (TransformerLens `patching.py`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxinterp.edits import PatchLayer
from jaxinterp.patching.grid import grid_for, labels, pair
from jaxinterp.patching.metrics import Metric
from jaxinterp.patching.result import PatchingResult
from jaxinterp.sweep import DEFAULT_BUDGET, sweep


def activation_patching(
    model, clean, corrupted, metric: Metric, *, site: str = "resid_pre", per_position: bool | None = None,
    noising: bool = False, chunk_size: int | None = None, memory_budget: int | str = DEFAULT_BUDGET,
    progress: bool = False,
) -> PatchingResult:
    """The metric of the corrupted run with each cell of `site` patched from the clean run.

    Args:
      model: a `Model`.
      clean, corrupted: inputs of one shape (text, token ids or batches), differing in a few tokens.
      metric: `fn(run) -> scalar`, e.g. `patching.logit_diff(answer, wrong)`.
      site: one of `grid.SITES`.
      per_position: for a site with heads (`attn.head_out`, `attn.q`, `attn.k`), a layer x position x
        head grid instead of layer x head.
      noising: write corrupted activations into the clean run instead.
      chunk_size, memory_budget, progress: passed to `sweep`.
    """
    clean, corrupted = pair(model, clean, corrupted)
    source, target = (corrupted, clean) if noising else (clean, corrupted)
    grid = grid_for(model, target, site, per_position)
    names = grid.site_names()
    source_run = model.run(source, capture=names)
    values = jnp.stack([source_run[name] for name in names])
    baselines = {"source": float(metric(source_run)), "target": float(metric(model.run(target)))}

    def patched(batch, cell):
        edit = PatchLayer(site, values, layer=cell["layer"], positions=cell.get("position"), heads=cell.get("head"))
        return metric(model.run(batch, edits=edit))

    out = sweep(patched, target, grid.cells(), chunk_size=chunk_size, memory_budget=memory_budget, progress=progress)
    clean_value, corrupted_value = (baselines["target"], baselines["source"]) if noising else (baselines["source"], baselines["target"])
    return PatchingResult(
        values=np.asarray(out, np.float32).reshape(grid.shape), axes=grid.axes, labels=labels(model, clean, grid),
        site=site, metric=getattr(metric, "label", "metric"), clean=clean_value, corrupted=corrupted_value,
        method="activation patching (corrupted into clean)" if noising else "activation patching (clean into corrupted)",
    )
