"""Activation patching: write one run's activations into another, cell by cell, in one sweep.

For every cell of a grid (layer x position, layer x head, ...) the corrupted run is re-run
with the clean activation written at that cell (`PatchLayer`), and a metric is read; the
reverse direction (`noising`) writes corrupted activations into the clean run. The layer,
position and head of a cell are array leaves of one edit, so the whole grid is one
compiled program, run by `sweep` in chunks sized to `memory_budget`, rather than one
forward per cell from Python (TransformerLens `patching.py`).

In a causal model a cell changes nothing before the first slot where the two inputs differ,
nor before its own position, so the target run is computed once into a KV cache and each cell
continues from its first changed slot (`jaxinterp.prefix`; starts bucketed to at most
`prefix_buckets` programs): with a pair that differs late, most of the grid's work is skipped.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxinterp import prefix
from jaxinterp.edits import PatchLayer
from jaxinterp.patching.grid import first_changed_slots, grid_for, labels, pair
from jaxinterp.patching.metrics import Metric
from jaxinterp.patching.result import PatchingResult
from jaxinterp.sweep import DEFAULT_BUDGET


def activation_patching(
    model, clean, corrupted, metric: Metric, *, site: str = "resid_pre", per_position: bool | None = None,
    noising: bool = False, share_prefix: bool = True, prefix_buckets: int = 4, chunk_size: int | None = None,
    memory_budget: int | str = DEFAULT_BUDGET, progress: bool = False,
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
      share_prefix: continue each cell from the cached target run at its first changed slot
        (module docstring; False: every cell recomputes every slot; same values). A bidirectional
        model shares nothing and ignores it.
      prefix_buckets: at most this many continuation starts, one compiled program each.
      chunk_size, memory_budget, progress: passed to `sweep`.
    """
    prefix.check_buckets(prefix_buckets)
    clean, corrupted = pair(model, clean, corrupted)
    source, target = (corrupted, clean) if noising else (clean, corrupted)
    grid = grid_for(model, target, site, per_position)
    names = grid.site_names()
    source_run = model.run(source, capture=names)
    values = jnp.stack([source_run[name] for name in names])
    cells = grid.cells()
    share = share_prefix and prefix.shares_prefix(model)
    starts = first_changed_slots(source, target, cells) if share else np.zeros(len(cells["layer"]), np.int64)
    buckets = prefix.bucket_starts(starts, prefix_buckets)
    target_run = prefix.cached_run(model, target) if buckets[-1] else model.run(target)
    baselines = {"source": float(metric(source_run)), "target": float(metric(target_run))}

    def cell_value(start: int):
        def patched(batch, cell):
            edit = PatchLayer(site, values, layer=cell["layer"], positions=cell.get("position"), heads=cell.get("head"))
            return metric(prefix.resume(model, target_run, batch, start, edits=edit))
        return patched

    out = prefix.sweep_buckets(cell_value, target, cells, starts, buckets, chunk_size=chunk_size,
                               memory_budget=memory_budget, progress=progress)
    clean_value, corrupted_value = (baselines["target"], baselines["source"]) if noising else (baselines["source"], baselines["target"])
    return PatchingResult(
        values=out.astype(np.float32).reshape(grid.shape), axes=grid.axes, labels=labels(model, clean, grid),
        site=site, metric=getattr(metric, "label", "metric"), clean=clean_value, corrupted=corrupted_value,
        method="activation patching (corrupted into clean)" if noising else "activation patching (clean into corrupted)",
    )
