"""Where experiments write: one folder per run holding results.json and PNG figures."""

from __future__ import annotations

import json
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxinterp.viz.figures import finish  # noqa: E402


def output_dir(path: str) -> str:
    """Creates (if needed) and returns the experiment's output folder."""
    os.makedirs(path, exist_ok=True)
    return path


def save_json(folder: str, data: dict[str, Any], name: str = "results.json") -> str:
    """Writes `data` as indented JSON (numpy scalars and arrays converted) and returns the path."""
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x))
    print(f"wrote {path}")
    return path


def save_figure(fig: plt.Figure, folder: str, name: str) -> str:
    """Saves a matplotlib figure as PNG (tight layout unless it has a layout engine) and closes it."""
    path = os.path.join(folder, name)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    finish(fig, path, dpi=120)
    print(f"wrote {path}")
    return path
