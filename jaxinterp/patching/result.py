"""`PatchingResult`: a patching grid as a labelled array, with its baselines, JSON and figures."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from jaxinterp.errors import ArgumentError
from jaxinterp.patching.metrics import normalised
from jaxinterp.viz.heatmap import layer_head_heatmap
from jaxinterp.viz.labelled_heatmap import labelled_heatmap


@dataclasses.dataclass(frozen=True)
class PatchingResult:
    """The metric of every patching cell, with what each axis means.

    Attributes:
      values: the metric (or, for attribution patching, its first-order estimate) of the
        patched run per cell, shaped like `axes`, e.g. [layer, position] or [layer, head].
      axes: the name of each axis of `values`.
      labels: axis name -> one label per index (token strings for `position`).
      site: the patched site (`resid_pre`, `attn.head_out`, ...).
      metric: what `values` measure (`logit difference`, ...).
      clean, corrupted: the metric of the unpatched clean and corrupted runs.
      method: `activation patching` or `attribution patching`, and the direction.
    """

    values: np.ndarray
    axes: tuple[str, ...]
    labels: dict[str, tuple[str, ...]]
    site: str
    metric: str
    clean: float
    corrupted: float
    method: str

    def __post_init__(self):
        expected = tuple(len(self.labels[axis]) for axis in self.axes)
        if self.values.shape != expected:
            raise ArgumentError(f"values: expected shape {expected} from the axis labels, found {self.values.shape}")

    @property
    def normalised(self) -> np.ndarray:
        """(values - corrupted) / (clean - corrupted) per cell (1: the cell restores the clean metric)."""
        return normalised(self.values, self.clean, self.corrupted)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary of everything in the result."""
        return {"method": self.method, "site": self.site, "metric": self.metric, "axes": list(self.axes),
                "labels": {axis: list(labels) for axis, labels in self.labels.items()},
                "clean": self.clean, "corrupted": self.corrupted,
                "values": self.values.tolist(), "normalised": self.normalised.tolist()}

    def figure(self, path: str | os.PathLike | None = None, *, normalise: bool = True) -> plt.Figure:
        """The grid as a heatmap (layer x position, or layer x head), saved to `path` when given."""
        if len(self.axes) != 2:
            raise ArgumentError(f"figure: expected a grid of two axes, found axes {self.axes}; index it first")
        values = self.normalised if normalise else self.values
        title = f"{self.method}: {self.site}"
        colorbar = f"normalised {self.metric}" if normalise else self.metric
        if self.axes == ("layer", "head"):
            bound = float(np.abs(values).max()) or 1.0
            return layer_head_heatmap(values, title=title, colorbar=colorbar, path=path, vmin=-bound, vmax=bound,
                                      cmap="RdBu_r")
        rows, columns = self.axes
        return labelled_heatmap(values, rows=self.labels[rows], columns=self.labels[columns], row_axis=rows,
                                column_axis=columns, title=title, colorbar=colorbar, path=path)
