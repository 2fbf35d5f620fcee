"""Per-layer profiles: one panel per statistic, every head as a dot and the layer median as a line."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from jaxinterp.viz.figures import finish


def layer_profiles(profiles: Mapping[str, np.ndarray], *, title: str = "", log: Sequence[str] = (),
                   path: str | os.PathLike | None = None) -> plt.Figure:
    """Panels of [layers, heads] (or [layers]) statistics against depth, log-scaled for the names in `log`."""
    fig, axes = plt.subplots(1, len(profiles), figsize=(4 * len(profiles), 3.4), squeeze=False)
    for ax, (name, values) in zip(axes[0], profiles.items()):
        values = np.asarray(values, np.float64).reshape(len(values), -1)
        layers = np.arange(values.shape[0])
        if values.shape[1] > 1:
            ax.plot(np.repeat(layers, values.shape[1]), values.ravel(), ".", color="grey", alpha=0.4, label="head")
        ax.plot(layers, np.median(values, axis=1), color="tab:blue", label="layer median")
        ax.set(xlabel="layer", ylabel=name, title=name)
        if name in log:
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return finish(fig, path)
