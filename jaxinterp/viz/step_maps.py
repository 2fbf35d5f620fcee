"""Step-to-step saliency maps with the question | thinking | summary blocks marked, and layer profiles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from jaxinterp.viz.figures import finish


def step_map_grid(maps, kinds: Sequence[str], layers: Sequence[int], *, title: str) -> plt.Figure:
    """One heatmap per chosen layer of [layers, n, n] step maps; lines separate the Q | T | S blocks."""
    maps = np.asarray(maps)
    kinds = np.asarray(kinds)
    cuts = [i - 0.5 for i in range(1, len(kinds)) if kinds[i] != kinds[i - 1]]
    cols = min(len(layers), 4)
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, layer in zip(axes.flat, layers):
        image = ax.imshow(maps[layer], cmap="magma", interpolation="nearest")
        for cut in cuts:
            ax.axhline(cut, color="cyan", lw=0.8)
            ax.axvline(cut, color="cyan", lw=0.8)
        ticks = [{"question": "Q", "thinking": "T", "summary": "S"}.get(k, "?") for k in kinds]
        ax.set_xticks(range(len(kinds)), ticks, fontsize=6)
        ax.set_yticks(range(len(kinds)), ticks, fontsize=6)
        ax.set_title(f"layer {layer}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return finish(fig)


def layer_curves(curves: Mapping[str, np.ndarray], *, ylabel: str, title: str) -> plt.Figure:
    """Per-layer curves (label -> [layers] mean, optionally [2, layers] mean and standard error)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, curve in curves.items():
        curve = np.asarray(curve)
        mean = curve[0] if curve.ndim == 2 else curve
        ax.plot(mean, marker="o", ms=3, label=label)
        if curve.ndim == 2:
            ax.fill_between(range(len(mean)), mean - curve[1], mean + curve[1], alpha=0.25)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return finish(fig)
