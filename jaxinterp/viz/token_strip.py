"""Token heat strips: each token of a text on a background coloured by its attribution score.

Tokens flow left to right and wrap into lines like text; the explained token is boxed; a
colour bar gives the scale (a diverging map centred on 0 for signed scores). `token_strips`
stacks several strips of the same tokens (one per method), each on its own scale.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize

from jaxinterp.viz.figures import finish

CHARS_PER_INCH = 11  # monospace characters per inch of strip at 9 pt, with a little room


def score_norm(scores) -> tuple[Normalize, str]:
    """The colour scale of scores: 0..max with `Reds` when none is negative, else symmetric with `RdBu_r`."""
    scores = np.asarray(scores, np.float32)
    if scores.min() >= 0:
        return Normalize(0.0, max(float(scores.max()), 1e-12)), "Reds"
    bound = max(float(np.abs(scores).max()), 1e-12)
    return Normalize(-bound, bound), "RdBu_r"


def _lines(tokens: Sequence[str], width: float) -> list[list[int]]:
    """Token indices wrapped into lines of at most `width` inches."""
    limit, lines, line, used = int(width * CHARS_PER_INCH), [], [], 0
    for i, token in enumerate(tokens):
        if line and used + len(token) + 1 > limit:
            lines.append(line)
            line, used = [], 0
        line.append(i)
        used += len(token) + 1
    return lines + [line]


LINE = 0.36  # inches per line of tokens
TITLE, BAR, GAP = 0.35, 0.12, 0.3  # inches: a strip's title, its colour bar, the space around the bar


def _strip(fig: plt.Figure, top: float, tokens: Sequence[str], scores: np.ndarray, lines: list[list[int]],
           width: float, title: str, highlight: int | None) -> float:
    """Draws one strip and its colour bar from `top` inches below the figure's top; returns where it ends."""
    height = fig.get_figheight()
    norm, cmap_name = score_norm(scores)
    cmap = plt.get_cmap(cmap_name)
    text_top = top + TITLE
    ax = fig.add_axes((0.01, 1 - (text_top + LINE * len(lines)) / height, 0.98, LINE * len(lines) / height))
    ax.axis("off")
    ax.set_xlim(0, int(width * CHARS_PER_INCH))
    ax.set_ylim(len(lines), 0)
    for row, indices in enumerate(lines):
        x = 0.0
        for i in indices:
            colour = cmap(norm(scores[i]))
            box_style = dict(boxstyle="square,pad=0.15", facecolor=colour,
                             edgecolor="black" if i == highlight else "none", linewidth=1.2)
            ax.text(x, row + 0.5, tokens[i], fontsize=9, family="monospace", va="center", bbox=box_style,
                    color="white" if np.mean(colour[:3]) < 0.45 else "black")
            x += len(tokens[i]) + 1
    fig.text(0.5, 1 - (top + 0.2) / height, title, ha="center", va="center", fontsize=10)
    bar_top = text_top + LINE * len(lines) + GAP / 2
    bar = fig.add_axes((0.3, 1 - (bar_top + BAR) / height, 0.4, BAR / height))
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=bar, orientation="horizontal")
    bar.tick_params(labelsize=7)
    return bar_top + BAR + GAP


def token_strips(tokens: Sequence[str], rows: Mapping[str, np.ndarray], *, title: str = "", highlight: int | None = None,
                 width: float = 9.0, path: str | os.PathLike | None = None) -> plt.Figure:
    """One strip per entry of `rows` (name -> scores [T]) over the same tokens [T] (display strings),
    each with its own colour bar; `highlight` boxes the explained token."""
    for name, scores in rows.items():
        if len(scores) != len(tokens):
            raise ValueError(f"scores of {name!r}: expected one per token ({len(tokens)}), found {len(scores)}")
    lines = _lines(tokens, width)
    head = TITLE if title else 0.0
    fig = plt.figure(figsize=(width, head + len(rows) * (TITLE + LINE * len(lines) + GAP + BAR + GAP)))
    if title:
        fig.text(0.5, 1 - 0.2 / fig.get_figheight(), title, ha="center", va="center", fontsize=11, weight="bold")
    top = head
    for name, scores in rows.items():
        top = _strip(fig, top, tokens, np.asarray(scores, np.float32), lines, width, name, highlight)
    return finish(fig, path)


def token_strip(tokens: Sequence[str], scores, *, title: str, highlight: int | None = None, width: float = 9.0,
                path: str | os.PathLike | None = None) -> plt.Figure:
    """Tokens [T] (display strings) coloured by scores [T]; `highlight` boxes the explained token."""
    return token_strips(tokens, {title: scores}, highlight=highlight, width=width, path=path)
