"""Heatmaps of a 2-D array whose rows and columns carry labels (layer x token position grids).

Signed values get a diverging map centred on 0, non-negative ones a sequential map
(`token_strip.score_norm`), so patching and attribution grids read the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from jaxinterp.errors import ArgumentError
from jaxinterp.viz.figures import finish
from jaxinterp.viz.token_strip import score_norm


def labelled_heatmap(
    values, *, rows: Sequence[str], columns: Sequence[str], row_axis: str, column_axis: str, title: str,
    colorbar: str, path: str | os.PathLike | None = None,
) -> plt.Figure:
    """A [rows, columns] array as a heatmap with one tick label per row and column (saved to `path` when given)."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (len(rows), len(columns)):
        raise ArgumentError(f"values: expected shape {(len(rows), len(columns))} for the labels, found {values.shape}")
    norm, cmap = score_norm(values)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.42 * len(columns) + 2.0), max(3.0, 0.26 * len(rows) + 1.5)))
    image = ax.imshow(values, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_xlabel(column_axis)
    ax.set_ylabel(row_axis)
    ax.set_xticks(range(len(columns)), list(columns), rotation=90, fontsize=7)
    step = 1 if len(rows) <= 32 else 2
    ax.set_yticks(range(0, len(rows), step), list(rows)[::step], fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=colorbar)
    fig.tight_layout()
    return finish(fig, path)
