"""Diffusion-CAM (Zuo et al., ACL 2026): the base map and its four refinement modules, switchable.

Base map (spec steps 4-6): the contrastive objective's gradient at one block's output, clamped
at 0, weighs the block's features (`cam.diffusion_base`), min-max normalised. Refinement
(steps 7-10) on each image's grid map M:

    baseline (no module): M with values < 0.4 zeroed (the reference's baseline mode only)
    otherwise: AKD -> DACG -> CBA (each when switched on), clip to [0, max M], min-max
               normalise, then SICD when switched on.

Every module is a switch (`modules`) so the ablation rows baseline, +AKD, +DACG, +CBA, +SICD
and all are one option apart.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxinterp.attribution.cam import diffusion_base
from jaxinterp.attribution.diffusion_cam.akd import akd
from jaxinterp.attribution.diffusion_cam.cba import cba
from jaxinterp.attribution.diffusion_cam.dacg import dacg
from jaxinterp.attribution.diffusion_cam.sicd import repeat_ratio, sicd
from jaxinterp.attribution.gradcam import cam_method
from jaxinterp.attribution.ops import minmax
from jaxinterp.attribution.request import Attribution, Request
from jaxinterp.errors import ArgumentError
from jaxinterp.models import segment_id

Array = jax.Array
MODULES = ("akd", "dacg", "cba", "sicd")
DEFAULT_SITE = "blocks.{third}.resid_post"  # the reference hooks block 10 of 32: a third of the depth


def refine(m: Array, key: Array, ratio: Array, *, modules: tuple[str, ...], baseline_threshold: float,
           step_ratio: float, dacg_blur: float | None = None) -> Array:
    """Spec steps 7-10 on one [H, W] base map (see the module docstring); `ratio` feeds SICD."""
    if not modules:
        return jnp.where(m < baseline_threshold, 0.0, m)
    x = m
    if "akd" in modules:
        x = akd(x, key, step_ratio=step_ratio)
    if "dacg" in modules:
        x = dacg(x, blur_sigma=dacg_blur)
    if "cba" in modules:
        x = cba(x)
    x = minmax(jnp.clip(x, 0.0, jnp.max(m)))
    return sicd(x, ratio) if "sicd" in modules else x


@functools.partial(jax.jit, static_argnames=("modules", "baseline_threshold", "step_ratio", "dacg_blur"))
def refine_all(maps: Array, keys: Array, ratios: Array, *, modules: tuple[str, ...], baseline_threshold: float,
               step_ratio: float, dacg_blur: float | None) -> Array:
    """`refine` on every map of [S, B, N, rows, cols] (keys likewise; ratios [B]: each row's SICD ratio)."""
    one = functools.partial(refine, modules=modules, baseline_threshold=baseline_threshold, step_ratio=step_ratio,
                            dacg_blur=dacg_blur)
    per_row = jax.vmap(jax.vmap(one, in_axes=(0, 0, None)), in_axes=(0, 0, 0))  # rows, then their images
    return jax.vmap(per_row, in_axes=(0, 0, None))(maps, keys, ratios)  # sites


def diffusion_cam(request: Request, *, modules: tuple[str, ...] = MODULES, baseline_threshold: float = 0.4,
                  step_ratio: float = 0.5, dacg_blur: float | None = None, seed: int = 0) -> Attribution:
    """Diffusion-CAM maps at the request's sites (default: the block a third of the way down).

    Options:
      modules: the refinement modules switched on, a subset of ("akd", "dacg", "cba", "sicd");
        () is the reference's baseline mode.
      baseline_threshold: zero below this in baseline mode (reference 0.4).
      step_ratio: the generation's denoising steps per token, for AKD's kernel (reference 0.5).
      dacg_blur: sigma of DACG's blur of the low-confidence values. None (default) is the released
        code, whose blur leaves the map unchanged and which gave the paper's figures; 0.3 is the
        blur the paper describes (`dacg.py`).
      seed: PRNG seed of AKD's tie-breaking noise.
    """
    unknown = set(modules) - set(MODULES)
    if unknown or request.region != "image":
        raise ArgumentError(f"modules: expected a subset of {MODULES} on region='image', found {tuple(modules)} "
                            f"on region={request.region!r}")
    base = cam_method(request, combine=diffusion_base)
    maps = base.image  # [S, B, N, rows, cols]
    batch = request.batch
    answer = (batch.segments == segment_id("answer")) | (batch.segments == segment_id("generated"))
    ratios = jax.vmap(repeat_ratio)(batch.tokens, answer & batch.mask)  # [B]
    # one key per site and image, shared by every row: a row's map is the one it gets alone
    keys = jax.random.split(jax.random.key(seed), (maps.shape[0], 1, maps.shape[2]))
    keys = jnp.broadcast_to(keys, maps.shape[:3])
    refined = refine_all(maps, keys, ratios, modules=tuple(m for m in MODULES if m in modules),
                         baseline_threshold=baseline_threshold, step_ratio=step_ratio, dacg_blur=dacg_blur)
    return Attribution(values=base.values, image=refined)
