"""The target's scores on masked images, one `sweep` over a stack of patch-grid masks
(Score-CAM's masks, deletion/insertion steps). A mask [B, N, rows, cols] is resized to the
image and multiplies the normalised pixels, so masked pixels take the processor's mean colour."""

from __future__ import annotations

import jax

from jaxinterp.attribution.batching import swept
from jaxinterp.attribution.passes import forward_values
from jaxinterp.attribution.request import Request

Array = jax.Array


def masked_score(model, batch, edits, target, mask, *, resize: str) -> Array:
    """The target's scores [B] with the image multiplied by one grid mask [B, N, rows, cols]."""
    scale = jax.image.resize(mask, (*mask.shape[:-2], *batch.pixels.shape[-2:]), method=resize, antialias=False)
    return forward_values(model, batch.replace(pixels=batch.pixels * scale[:, :, None]), edits, target)


def masked_scores(request: Request, masks: Array, *, resize: str = "linear", chunk_size: int | None = None) -> Array:
    """Scores [M, B] of the request's target on the image multiplied by each mask [M, B, N, rows, cols]
    (`resize`: `linear` for soft Score-CAM masks, `nearest` for whole patches)."""
    args = (request.model, request.batch, request.edits, request.target)
    return swept(masked_score, args, masks, options=(("resize", resize),),
                 chunk_size=chunk_size)
