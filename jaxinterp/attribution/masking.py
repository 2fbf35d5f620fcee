"""The target's scores on masked images, one `sweep` over a stack of patch-grid masks
(Score-CAM's masks, deletion/insertion steps). A mask [B, N, rows, cols] is resized to the
image and multiplies the normalised pixels, so masked pixels take the processor's mean colour."""

from __future__ import annotations

import jax

from jaxinterp.attribution.passes import forward_values
from jaxinterp.attribution.request import Request
from jaxinterp.sweep import sweep

Array = jax.Array


def masked_scores(request: Request, masks: Array, *, resize: str = "linear", chunk_size: int | None = None) -> Array:
    """Scores [M, B] of the request's target on the image multiplied by each mask [M, B, N, rows, cols]
    (`resize`: `linear` for soft Score-CAM masks, `nearest` for whole patches)."""
    config, params = request.config, request.model.params
    size = request.batch.pixels.shape[-2:]

    def score(batch, mask):
        scale = jax.image.resize(mask, (*mask.shape[:-2], *size), method=resize, antialias=False)
        return forward_values(config, params, batch.replace(pixels=batch.pixels * scale[:, :, None]), request.edits,
                              request.target)

    return sweep(score, request.batch, masks, chunk_size=chunk_size, progress=False)
