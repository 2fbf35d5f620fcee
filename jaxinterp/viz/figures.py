"""How every figure function of `jaxinterp.viz` hands its figure back.

The backend is left to matplotlib (inline in a notebook, Agg on a headless machine). A
returned figure is detached from pyplot, so a notebook shows it once, as the cell's value,
and a script that draws hundreds of figures does not keep them all open.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt


def finish(fig: plt.Figure, path: str | os.PathLike | None = None, *, dpi: int = 150) -> plt.Figure:
    """Saves `fig` to `path` when given, closes it in pyplot and returns it."""
    if path is not None:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return fig
