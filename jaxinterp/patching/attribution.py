"""Attribution patching: the first-order estimate of every patching cell from one backward pass.

    metric(patched at cell) - metric(target) ~= sum over the cell of grad(metric)(target) * (source - target)

(Nanda 2023; TransformerLens `attribution_patch`). The gradient comes from `Model.grad` on
the target (corrupted) run with respect to every site of the grid at once, so the whole grid
costs one forward and backward (plus the forwards that capture both runs' activations).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxinterp.patching.grid import grid_for, labels, pair
from jaxinterp.patching.metrics import Metric
from jaxinterp.patching.result import PatchingResult


def attribution_patching(
    model, clean, corrupted, metric: Metric, *, site: str = "resid_pre", per_position: bool | None = None,
    noising: bool = False,
) -> PatchingResult:
    """First-order estimate of `activation_patching` with the same arguments; `values` hold
    metric(target) + estimated change, so `normalised` reads like the exact grid's."""
    clean, corrupted = pair(model, clean, corrupted)
    source, target = (corrupted, clean) if noising else (clean, corrupted)
    grid = grid_for(model, target, site, per_position)
    names = grid.site_names()
    source_run, target_run = model.run(source, capture=names), model.run(target, capture=names)
    target_value, grads = model.grad(metric, target, wrt=names)
    # per token (and head): [L, B, T] or [L, B, T, H]
    change = jnp.stack([jnp.sum(grads[n] * (source_run[n] - target_run[n]), axis=-1) for n in names])
    if "position" in grid.axes:
        onehot = jnp.asarray(target.positions)[..., None] == jnp.arange(grid.positions)  # [B, T, P]
        change = jnp.einsum("lbt...,btp->lp...", change, onehot.astype(change.dtype))
    else:
        change = jnp.sum(change, axis=(1, 2))
    source_value = float(metric(source_run))
    clean_value, corrupted_value = (float(target_value), source_value) if noising else (source_value, float(target_value))
    return PatchingResult(
        values=np.asarray(float(target_value) + change, np.float32), axes=grid.axes, labels=labels(model, clean, grid),
        site=site, metric=getattr(metric, "label", "metric"), clean=clean_value, corrupted=corrupted_value,
        method="attribution patching (corrupted into clean)" if noising else "attribution patching (clean into corrupted)",
    )
