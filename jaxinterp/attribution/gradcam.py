"""Gradient CAMs at any sites, every site from one backward: Grad-CAM, Grad-CAM++, LLaVA-CAM.

The smooth variant (LLaVA-CAM's "inspired by Smooth-CAM", spec A.7; Omeiza et al. 2019)
repeats the map on `samples` copies of the image with Gaussian noise of std `noise_std` in
[0, 1] pixel space (divided by the processor's per-channel std, since pixels arrive
normalised), averages the maps and re-normalises by the max. Each copy's noise is drawn once
and added to every row of a batch, so a row's map is the one it gets alone. The copies run as
one `sweep`: one compiled, vmapped program, not a Python loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.attribution import cam
from jaxinterp.attribution.batching import swept
from jaxinterp.attribution.ops import max_normalise
from jaxinterp.attribution.passes import forward_backward, forward_backward_jit
from jaxinterp.attribution.regions import features, unflatten
from jaxinterp.attribution.request import Attribution, Request
from jaxinterp.errors import ArgumentError

Array = jax.Array
Combine = Callable[[Array, Array, Array], Array]


def combined(config, batch, activations, grads, *, sites: tuple[str, ...], region: str, combine: Combine,
             threshold: float | None) -> Array:
    """Maps [S, B, N, rows, cols] or [S, B, T]: `combine`(F, G) at each of `sites`, values below
    `threshold` x the map's max zeroed (None: kept)."""
    maps = []
    for site in sites:
        f, mask = features(config, batch, site, activations[site], region)
        g, _ = features(config, batch, site, grads[site], region)
        m = combine(f, g, mask)
        if threshold is not None:
            m = jnp.where(m >= threshold * jnp.max(m, axis=-1, keepdims=True), m, 0.0)
        maps.append(unflatten(m, config, region))
    return jnp.stack(maps)


def site_maps(model, batch, edits, target, deltas, **how) -> tuple[Array, Array]:
    """(scores [B], `combined` maps) of one forward and backward; `how` as `combined`'s keywords."""
    values, activations, grads = forward_backward(model, batch, edits, target, deltas)
    return values, combined(model.config, batch, activations, grads, **how)


def pixel_noise_scale(model, channels: int, noise_std: float) -> np.ndarray:
    """[C, 1, 1] std of Gaussian noise of `noise_std` in [0, 1] pixel space, in normalised pixel units."""
    std = getattr(model.processor, "image_std", None)
    std = np.ones(channels, np.float32) if std is None else np.asarray(std, np.float32)
    return (noise_std / std).reshape(channels, 1, 1)


def noisy_maps(model, batch, edits, target, deltas, noise, **how) -> tuple[Array, Array]:
    """`site_maps` of the batch with `noise` added to its pixels (the arrays first, for `swept`)."""
    return site_maps(model, batch.replace(pixels=batch.pixels + noise), edits, target, deltas, **how)


def smoothed(request: Request, how: dict, samples: int, noise_std: float, seed: int,
             chunk_size: int | None) -> tuple[Array, Array]:
    """Mean of the maps over `samples` noisy copies of the image (one sweep), re-normalised by its
    max over each map; `how` as `combined`'s keywords."""
    batch = request.batch
    if batch.pixels is None:
        raise ArgumentError("samples: smoothing adds noise to the image, but the inputs carry none")
    scale = pixel_noise_scale(request.model, batch.pixels.shape[2], noise_std)
    noise = jax.random.normal(jax.random.key(seed), (samples, 1, *batch.pixels.shape[1:])) * scale
    args = (request.model, batch, request.edits, request.target, request.deltas())
    values, maps = swept(noisy_maps, args, noise, options=tuple(how.items()), chunk_size=chunk_size)
    axes = (-2, -1) if request.region == "image" else (-1,)
    return values.mean(axis=0), max_normalise(maps.mean(axis=0), axes=axes)


def cam_method(request: Request, *, combine: Combine, threshold: float | None = None, samples: int = 0,
               noise_std: float = 0.1, seed: int = 0, chunk_size: int | None = None) -> Attribution:
    """A gradient CAM (`combine`, from `cam`) at every site of the request.

    Options:
      threshold: zero the values below threshold x the map's max (LLaVA-CAM's code: 0.5; None: off).
      samples: > 0 gives the smooth variant over that many noisy copies (LLaVA-CAM's code: 50).
      noise_std: the noise's std in [0, 1] pixel space (LLaVA-CAM's code: 0.1).
      seed: the noise's PRNG seed.
      chunk_size: noisy copies per vmapped call (default: as many as fit the sweep's memory budget).
    """
    if samples < 0:
        raise ArgumentError(f"samples: expected >= 0 noisy copies, found {samples}")
    how = dict(sites=request.sites, region=request.region, combine=combine, threshold=threshold)
    if samples:
        values, maps = smoothed(request, how, samples, noise_std, seed, chunk_size)
    else:  # the forward and backward compile once for every CAM of these sites; the maps are cheap
        values, activations, grads = forward_backward_jit(request.model, request.batch, request.edits,
                                                          request.target, request.deltas())
        maps = combined(request.config, request.batch, activations, grads, **how)
    return Attribution(values=values, **{request.region: maps})


grad_cam = functools.partial(cam_method, combine=cam.grad_cam)
grad_cam_pp = functools.partial(cam_method, combine=cam.grad_cam_pp)
llava_cam = functools.partial(cam_method, combine=cam.llava_cam, threshold=0.5)
llava_cam_intensity = functools.partial(cam_method, combine=cam.llava_cam_intensity)
