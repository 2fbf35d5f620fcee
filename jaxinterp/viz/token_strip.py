"""Token heat strips: each token of a text on a background coloured by its attribution score.

Tokens flow left to right and wrap into lines like text; the explained token is boxed; a
colour bar gives the scale (a diverging map centred on 0 for signed scores).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402


def score_norm(scores) -> tuple[Normalize, str]:
    """The colour scale of scores: 0..max with `Reds` when none is negative, else symmetric with `RdBu_r`."""
    scores = np.asarray(scores, np.float32)
    if scores.min() >= 0:
        return Normalize(0.0, max(float(scores.max()), 1e-12)), "Reds"
    bound = max(float(np.abs(scores).max()), 1e-12)
    return Normalize(-bound, bound), "RdBu_r"


def token_strip(tokens: Sequence[str], scores, *, title: str, highlight: int | None = None, width: float = 9.0,
                label: str = "attribution", path: str | os.PathLike | None = None) -> plt.Figure:
    """Tokens [T] (display strings) coloured by scores [T]; `highlight` boxes the explained token."""
    scores = np.asarray(scores, np.float32)
    if len(tokens) != len(scores):
        raise ValueError(f"scores: expected one per token ({len(tokens)}), found {len(scores)}")
    norm, cmap_name = score_norm(scores)
    cmap = plt.get_cmap(cmap_name)
    chars_per_line = int(width * 11)
    lines, line, used = [], [], 0
    for i, token in enumerate(tokens):
        if line and used + len(token) + 1 > chars_per_line:
            lines.append(line)
            line, used = [], 0
        line.append(i)
        used += len(token) + 1
    lines.append(line)
    fig = plt.figure(figsize=(width, 0.36 * len(lines) + 1.1))
    ax = fig.add_axes((0.01, 0.3, 0.98, 0.6))
    ax.axis("off")
    ax.set_xlim(0, chars_per_line)
    ax.set_ylim(len(lines), 0)
    for row, indices in enumerate(lines):
        x = 0.0
        for i in indices:
            colour = cmap(norm(scores[i]))
            text_colour = "white" if np.mean(colour[:3]) < 0.45 else "black"
            box = dict(boxstyle="square,pad=0.15", facecolor=colour,
                       edgecolor="black" if i == highlight else "none", linewidth=1.2)
            ax.text(x, row + 0.5, tokens[i], fontsize=9, family="monospace", va="center", color=text_colour, bbox=box)
            x += len(tokens[i]) + 1
    ax.set_title(title, fontsize=10)
    bar = fig.add_axes((0.25, 0.1, 0.5, 0.06))
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=bar, orientation="horizontal", label=label)
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig
