"""Attribution maps over images: one overlay with a colour bar, and a grid of per-layer overlays.

A map over the patch grid ([rows, cols]) is drawn over the image it explains, stretched to the
image's extent with bilinear smoothing (matplotlib's, at draw time), in the JET colours and
alpha 0.4 of LLaVA-CAM's figures; the colour bar gives the map's scale.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.colors
import matplotlib.pyplot as plt
import numpy as np

from jaxinterp.viz.figures import finish

ALPHA = 0.4  # LLaVA-CAM's overlay weight
CMAP = "jet"


def _draw(ax: plt.Axes, image: np.ndarray, heatmap: np.ndarray, vmin: float, vmax: float, alpha: float):
    height, width = image.shape[:2]
    ax.imshow(image, extent=(0, width, height, 0))
    ax.imshow(heatmap, cmap=CMAP, alpha=alpha, vmin=vmin, vmax=vmax, extent=(0, width, height, 0),
              interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def _scale(vmin: float, vmax: float) -> plt.cm.ScalarMappable:
    """The colour bar's mapping, opaque (the overlay's alpha would wash it out)."""
    return plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(vmin, vmax), cmap=CMAP)


def _range(maps: np.ndarray) -> tuple[float, float]:
    low, high = float(np.min(maps)), float(np.max(maps))
    return low, high if high > low else low + 1.0


def image_overlay(image, heatmap, *, title: str, label: str = "attribution", alpha: float = ALPHA,
                  path: str | os.PathLike | None = None) -> plt.Figure:
    """The image [H, W, 3] (uint8 or [0, 1] floats) beside the map [rows, cols] drawn over it, with a colour bar."""
    image, heatmap = np.asarray(image), np.asarray(heatmap, np.float32)
    vmin, vmax = _range(heatmap)
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.2, 3.6), gridspec_kw={"width_ratios": [1, 1.15]})
    left.imshow(image)
    left.set_title("image", fontsize=9)
    left.set_xticks([])
    left.set_yticks([])
    _draw(right, image, heatmap, vmin, vmax, alpha)
    right.set_title(title, fontsize=9)
    fig.colorbar(_scale(vmin, vmax), ax=right, fraction=0.046, pad=0.04, label=label)
    fig.tight_layout()
    return finish(fig, path)


def layer_grid(image, maps, labels: Sequence[str], *, title: str, label: str = "attribution", cols: int = 4,
               alpha: float = ALPHA, shared_scale: bool = True, path: str | os.PathLike | None = None) -> plt.Figure:
    """One overlay per map of [L, rows, cols] over the same image.

    `shared_scale`: one colour scale for all maps (every layer of one method, whose sizes
    compare), or each map min-max normalised to [0, 1] (different methods, whose units differ).
    """
    image, maps = np.asarray(image), np.asarray(maps, np.float32)
    if len(labels) != len(maps):
        raise ValueError(f"labels: expected one per map ({len(maps)}), found {len(labels)}")
    if not shared_scale:
        low = maps.min(axis=(1, 2), keepdims=True)
        maps = (maps - low) / np.maximum(maps.max(axis=(1, 2), keepdims=True) - low, 1e-12)
        label = f"{label} (each map scaled to [0, 1])"
    cols = min(cols, len(maps))
    rows = -(-len(maps) // cols)
    vmin, vmax = _range(maps)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols + 1.2, 2.5 * rows + 0.5), squeeze=False,
                             layout="constrained")
    for ax, heatmap, name in zip(axes.flat, maps, labels):
        _draw(ax, image, heatmap, vmin, vmax, alpha)
        ax.set_title(name, fontsize=8)
    for ax in list(axes.flat)[len(maps):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.colorbar(_scale(vmin, vmax), ax=axes, shrink=0.8, label=label)
    return finish(fig, path)
