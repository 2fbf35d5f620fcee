"""Layer x head heatmaps, the standard picture of per-head statistics."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np

from jaxinterp.viz.figures import finish


def layer_head_heatmap(
    values, *, title: str, colorbar: str, path: str | os.PathLike | None = None, vmin=None, vmax=None, cmap="viridis"
) -> plt.Figure:
    """A [layers, heads] array as a heatmap with labelled axes (saved to `path` when given)."""
    values = np.asarray(values, dtype=np.float32)
    layers, heads = values.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * heads + 2.0), max(4.0, 0.26 * layers + 1.5)))
    image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(0, layers, 1 if layers <= 32 else 2))
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=colorbar)
    fig.tight_layout()
    return finish(fig, path)
