"""Deletion and insertion curves of an image map (Petsiuk et al., RISE, BMVC 2018, sec. 4.1).

Patches are ranked by the map (all images of a row together). Deletion removes the top
fraction k / steps of them (k = 0..steps) from the image, insertion shows only them on a
blank image; the target's score after each step traces a curve over the fraction, and its
area (trapezoid rule) is the AUC: low for deletion and high for insertion when the map
ranks the evidence well. Removed patches take the processor's mean colour (0 in normalised
pixels). All 2 (steps + 1) masked images run as one `sweep`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.attribution.masking import masked_scores
from jaxinterp.attribution.regions import check_region
from jaxinterp.attribution.request import Request
from jaxinterp.attribution.targets import Target, answer_tokens
from jaxinterp.errors import ArgumentError

Array = jax.Array


def ranked_masks(maps: Array, steps: int) -> Array:
    """[steps + 1, B, N, rows, cols] float masks showing the top k / steps of each row's patches."""
    flat = maps.reshape(maps.shape[0], -1)
    rank = jnp.argsort(jnp.argsort(-flat, axis=1), axis=1)  # 0 = most salient
    counts = jnp.ceil(jnp.arange(steps + 1) / steps * flat.shape[1])
    return (rank[None] < counts[:, None, None]).astype(jnp.float32).reshape(steps + 1, *maps.shape)


def deletion_insertion(model, inputs, maps: Array, target: Target | None = None, *, steps: int = 16, edits=(),
                       chunk_size: int | None = None) -> dict[str, Array]:
    """Deletion and insertion curves and AUCs of image maps [B, N, rows, cols].

    Args:
      target: the explained score (default: the answer's token probabilities, summed).
      steps: perturbation steps (fractions 0, 1/steps, ..., 1 of the patches).
      edits: active in every forward.
      chunk_size: masked images per vmapped call (default: as many as fit the sweep's memory budget).
    Returns {"fractions": [steps + 1], "deletion", "insertion": [steps + 1, B] curves,
             "deletion_auc", "insertion_auc": [B]}.
    """
    batch = model.batch(inputs)
    check_region("image", model.config, batch)
    maps = jnp.asarray(maps, jnp.float32)
    grid = (batch.pixels.shape[0], batch.pixels.shape[1], *model.config.image_grid[1:])
    if maps.shape != grid:
        raise ArgumentError(f"maps: expected one map per image, shape {grid}, found {maps.shape}")
    if steps < 1:
        raise ArgumentError(f"steps: expected >= 1, found {steps}")
    target = (target or answer_tokens(batch, score="prob")).bind(batch, model.next_token)
    request = Request(model=model, batch=batch, target=target, sites=(), region="image", edits=tuple(edits))
    shown = ranked_masks(maps, steps)
    scores = masked_scores(request, jnp.concatenate([1.0 - shown, shown]), resize="nearest", chunk_size=chunk_size)
    fractions = jnp.asarray(np.arange(steps + 1) / steps, jnp.float32)
    deletion, insertion = scores[:steps + 1], scores[steps + 1:]
    auc = lambda curve: jnp.trapezoid(curve, fractions, axis=0)  # noqa: E731
    return {"fractions": fractions, "deletion": deletion, "insertion": insertion,
            "deletion_auc": auc(deletion), "insertion_auc": auc(insertion)}
