"""Attribution patching: the first-order estimate of every patching cell from one backward pass.

    metric(patched at cell) - metric(target) ~= sum over the cell of grad(metric)(target) * (source - target)

(Nanda 2023; TransformerLens `attribution_patch`). The gradient comes from `Model.grad` on
the target (corrupted) run with respect to every site of the grid at once, so the whole grid
costs one forward and backward (plus the forwards that capture both runs' activations).
For queries and keys, `qk_fix` takes AtP*'s estimate instead (`qk_fix.py`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxinterp.errors import ArgumentError
from jaxinterp.patching import qk_fix as qk
from jaxinterp.patching.grid import grid_for, labels, pair
from jaxinterp.patching.metrics import Metric
from jaxinterp.patching.result import PatchingResult


def attribution_patching(
    model, clean, corrupted, metric: Metric, *, site: str = "resid_pre", per_position: bool | None = None,
    noising: bool = False, qk_fix: bool = False,
) -> PatchingResult:
    """First-order estimate of `activation_patching` with the same arguments; `values` hold
    metric(target) + estimated change, so `normalised` reads like the exact grid's.

    `qk_fix` (site `attn.q` or `attn.k` only): the attention pattern under each patch is
    computed exactly and only the metric's dependence on it is linearised (AtP*, `qk_fix.py`);
    it costs one forward per layer more.
    """
    if qk_fix and site not in qk.SITES:
        raise ArgumentError(f"qk_fix, site: qk_fix=True expects site one of {qk.SITES}, found site={site!r}")
    clean, corrupted = pair(model, clean, corrupted)
    source, target = (corrupted, clean) if noising else (clean, corrupted)
    grid = grid_for(model, target, site, per_position)
    names = grid.site_names()
    source_run = model.run(source, capture=names)
    if qk_fix:
        target_value, change = qk.qk_fixed_change(model, grid, metric, source_run, target)
    else:
        target_run = model.run(target, capture=names)
        target_value, grads = model.grad(metric, target, wrt=names)
        change = jnp.stack([jnp.sum(grads[n] * (source_run[n] - target_run[n]), axis=-1) for n in names])
    # change per batch row: [L, B, T] or [L, B, T, heads] per token, or [L, B, heads] for a whole-position patch
    if "position" in grid.axes:
        onehot = jnp.asarray(target.positions)[..., None] == jnp.arange(grid.positions)  # [B, T, P]
        change = jnp.einsum("lbt...,btp->lp...", change, onehot.astype(change.dtype))
    else:
        change = jnp.sum(change.reshape(grid.layers, -1, grid.heads), axis=1)
    source_value = float(metric(source_run))
    clean_value, corrupted_value = (float(target_value), source_value) if noising else (source_value, float(target_value))
    return PatchingResult(
        values=np.asarray(float(target_value) + change, np.float32), axes=grid.axes, labels=labels(model, clean, grid),
        site=site, metric=getattr(metric, "label", "metric"), clean=clean_value, corrupted=corrupted_value,
        method=f"attribution patching{' with the QK fix' if qk_fix else ''} "
               f"{'(corrupted into clean)' if noising else '(clean into corrupted)'}",
    )
