"""Score-CAM (Wang et al., CVPR Workshops 2020, eqs. 3-8): gradient-free CAM from masked inputs.

Each activation map A_k of a site (channel k over one image's patch grid), upsampled to the
image and min-max normalised, masks the image; the target's score on the masked image,
softmax-normalised over the channels (as pytorch-grad-cam), weighs A_k:
map = ReLU(sum_k w_k A_k). Masked pixels go to 0 in normalised pixel space: the image
processor's mean colour. All channels of all sites run as one `sweep` over masks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxinterp.attribution.masking import masked_scores
from jaxinterp.attribution.ops import minmax
from jaxinterp.attribution.passes import forward_values_jit
from jaxinterp.attribution.regions import image_features
from jaxinterp.attribution.request import Attribution, Request
from jaxinterp.errors import ArgumentError

Array = jax.Array


def top_channels(maps: Array, count: int) -> Array:
    """[B, N, K, rows, cols]: the `count` channels of [B, N, rows, cols, C] with the largest variance over patches."""
    spread = jnp.var(maps, axis=(2, 3))  # [B, N, C]
    chosen = jax.lax.top_k(spread, min(count, maps.shape[-1]))[1]
    return jnp.moveaxis(jnp.take_along_axis(maps, chosen[:, :, None, None, :], axis=-1), -1, 2)


def score_cam(request: Request, *, channels: int = 64, chunk_size: int | None = None) -> Attribution:
    """Score-CAM at every site of the request.

    Options:
      channels: activation maps used per site, the ones with the largest variance over the patches
        (the paper uses all; 64 keeps a 4096-wide decoder affordable).
      chunk_size: masked images per vmapped call (default: as many as fit the sweep's memory budget).
    """
    if request.region != "image":
        raise ArgumentError("region: Score-CAM masks the image, so it maps image patches only (region='image')")
    if channels < 1:
        raise ArgumentError(f"channels: expected >= 1, found {channels}")
    run = request.model.run(request.batch, capture=request.sites, edits=request.edits)
    maps = jnp.stack([top_channels(image_features(request.config, request.batch, site, run[site]), channels)
                      for site in request.sites])  # [S, B, N, K, rows, cols]
    sites, batch_size, images, count = maps.shape[:4]
    masks = jnp.moveaxis(minmax(maps), 3, 1).reshape(sites * count, batch_size, images, *maps.shape[-2:])
    scores = masked_scores(request, masks, chunk_size=chunk_size).reshape(sites, count, batch_size)
    weights = jax.nn.softmax(scores, axis=1)  # [S, K, B]
    cam = jax.nn.relu(jnp.einsum("skb,sbnkhw->sbnhw", weights, maps))
    values = forward_values_jit(request.model, request.batch, request.edits, request.target)
    return Attribution(values=values, image=cam)
