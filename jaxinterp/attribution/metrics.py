"""Localisation metrics of an attribution map against ground-truth object masks.

Diffusion-CAM's evaluation (spec "Evaluation", its `predict.py`) scores a heatmap h, resized
to the mask's size (bilinear) and min-max normalised to [0, 1], against K object masks
(one per ground-truth object; all-false masks pad):

- Obj-IoU: h binarised by Otsu's threshold on its 8-bit values (as cv2.THRESH_OTSU), IoU with
  each object's mask, the max over objects;
- Contrast: mean(h | fg) / (mean(h | bg) + 1e-8), fg the union of the masks;
- Concentration: sum(h | fg) / (sum(h) + 1e-8);
- F3: the harmonic mean of (Obj-IoU, min(Contrast / 20, 1), Concentration), 0 if any is 0;
- pointing game (Zhang et al., ECCV 2016): 1 when h's maximum lies in fg.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxinterp.attribution.ops import EPS, minmax, upsample

Array = jax.Array
CONTRAST_SCALE = 20.0  # Contrast / 20, capped at 1, enters F3 (reference)
LEVELS = 256


def otsu_threshold(levels: Array) -> Array:
    """Otsu's threshold t of integer grey levels in [0, 255]: the t maximising the between-class
    variance of {<= t} and {> t} (first maximum on ties, as OpenCV)."""
    hist = jnp.bincount(levels.reshape(-1), length=LEVELS).astype(jnp.float32)
    p = hist / jnp.sum(hist)
    omega = jnp.cumsum(p)
    mu = jnp.cumsum(p * jnp.arange(LEVELS))
    between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    return jnp.argmax(jnp.where((omega > 0) & (omega < 1), between, -1.0))


def binarise(h: Array) -> Array:
    """Foreground of a [0, 1] heatmap by Otsu's threshold on floor(255 h)."""
    levels = jnp.clip(jnp.floor(h * 255), 0, 255).astype(jnp.int32)
    return levels > otsu_threshold(levels)


def obj_iou(h: Array, masks: Array) -> Array:
    """Max over objects of IoU(Otsu(h), mask_k); h [H, W] in [0, 1], masks [K, H, W] bool."""
    fg = binarise(h)[None]
    union = jnp.sum(fg | masks, axis=(1, 2))
    return jnp.max(jnp.where(union > 0, jnp.sum(fg & masks, axis=(1, 2)) / jnp.maximum(union, 1), 0.0))


def contrast(h: Array, fg: Array) -> Array:
    """mean(h | fg) / (mean(h | bg) + 1e-8) (1 for the mean of an empty foreground, as the reference)."""
    fg_mean = jnp.where(fg.any(), jnp.sum(h * fg) / jnp.maximum(jnp.sum(fg), 1), 1.0)
    bg_mean = jnp.sum(h * ~fg) / jnp.maximum(jnp.sum(~fg), 1)
    return fg_mean / (bg_mean + EPS)


def concentration(h: Array, fg: Array) -> Array:
    """sum(h | fg) / (sum(h) + 1e-8)."""
    return jnp.sum(h * fg) / (jnp.sum(h) + EPS)


def f3(iou: Array, contrast_ratio: Array, concentration_ratio: Array) -> Array:
    """Harmonic mean of (Obj-IoU, min(Contrast / 20, 1), Concentration); 0 when any is 0."""
    parts = jnp.stack([iou, jnp.minimum(contrast_ratio / CONTRAST_SCALE, 1.0), concentration_ratio])
    return jnp.where(jnp.all(parts > 0), 3.0 / jnp.sum(1.0 / jnp.where(parts > 0, parts, 1.0)), 0.0)


def pointing_game(h: Array, fg: Array) -> Array:
    """1.0 when the heatmap's maximum lies in the foreground, else 0.0."""
    return fg.reshape(-1)[jnp.argmax(h.reshape(-1))].astype(jnp.float32)


@jax.jit
def localisation(heatmap: Array, masks: Array) -> dict[str, Array]:
    """Every metric of one map [rows, cols] (any resolution) against object masks [K, H, W] bool."""
    chex.assert_rank([heatmap, masks], [2, 3])
    h = minmax(upsample(heatmap.astype(jnp.float32), masks.shape[1:]))
    fg = jnp.any(masks, axis=0)
    iou, ratio, share = obj_iou(h, masks), contrast(h, fg), concentration(h, fg)
    return {"obj_iou": iou, "contrast": ratio, "concentration": share, "f3": f3(iou, ratio, share),
            "pointing": pointing_game(h, fg)}
