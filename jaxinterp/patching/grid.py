"""The cells of a patching grid: which site, which layers, positions and heads, with labels.

Shared by activation and attribution patching so that both return the same axes. A grid
over a residual-width site (`resid_pre`, `resid_mid`, `resid_post`, `attn.out`, `mlp.out`)
is layer x position; over a site with a head axis (`attn.head_out`, `attn.q`, and `attn.k`, whose
heads are the kv heads) it is layer x head (every position at once) or, `per_position`, layer x
position x head. Positions are absolute token positions.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from jaxinterp.errors import ArgumentError
from jaxinterp.models import Batch

SITES = ("resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out", "attn.head_out", "attn.q", "attn.k")
HEAD_SITES = ("attn.head_out", "attn.q", "attn.k")


@dataclasses.dataclass(frozen=True)
class Grid:
    """The cells of one patching grid (see the module docstring)."""

    site: str
    layers: int
    positions: int
    heads: int | None
    axes: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        sizes = {"layer": self.layers, "position": self.positions, "head": self.heads}
        return tuple(sizes[axis] for axis in self.axes)

    def cells(self) -> dict[str, np.ndarray]:
        """Flat int32 arrays, one entry per cell in row-major order of `axes`, keyed by axis name."""
        rows = list(itertools.product(*(range(size) for size in self.shape)))
        return {axis: np.array([row[i] for row in rows], np.int32) for i, axis in enumerate(self.axes)}

    def site_names(self) -> list[str]:
        return [f"blocks.{layer}.{self.site}" for layer in range(self.layers)]


def pair(model, clean, corrupted) -> tuple[Batch, Batch]:
    """The clean and corrupted inputs as batches of one shape (patching writes one into the other)."""
    clean, corrupted = model.batch(clean), model.batch(corrupted)
    if clean.shape != corrupted.shape:
        raise ArgumentError(f"clean, corrupted: expected inputs of one shape (same number of tokens), found "
                            f"{clean.shape} and {corrupted.shape}")
    return clean, corrupted


def grid_for(model, batch: Batch, site: str, per_position: bool | None) -> Grid:
    """The grid of `site` over this model and batch (`per_position` None: by position except for heads)."""
    if site not in SITES:
        raise ArgumentError(f"site: expected one of {SITES}, found {site!r}")
    layers = len(model.resolve_capture(f"blocks.*.{site}"))
    positions = int(np.asarray(batch.positions).max()) + 1
    if site not in HEAD_SITES:
        if per_position is False:
            raise ArgumentError(f"per_position: site {site!r} is patched per position; found per_position=False")
        return Grid(site, layers, positions, None, ("layer", "position"))
    heads = model.site_shapes(batch)[f"blocks.0.{site}"].shape[2]
    axes = ("layer", "position", "head") if per_position else ("layer", "head")
    return Grid(site, layers, positions, heads, axes)


def labels(model, batch: Batch, grid: Grid) -> dict[str, tuple[str, ...]]:
    """Tick labels of each axis: numbers, and for positions `index token` read from the first row."""
    found = {"layer": tuple(str(i) for i in range(grid.layers)),
             "head": tuple(str(i) for i in range(grid.heads or 0))}
    tokens = np.asarray(batch.tokens[0])
    slots = {int(p): int(t) for p, t, real in zip(np.asarray(batch.positions[0]), tokens, np.asarray(batch.mask[0])) if real}
    tokenizer = model.tokenizer

    def token(position: int) -> str:
        if position not in slots:
            return str(position)
        text = tokenizer.decode([slots[position]]) if tokenizer is not None else str(slots[position])
        return f"{position} {text}"

    found["position"] = tuple(token(p) for p in range(grid.positions))
    return {axis: found[axis] for axis in grid.axes}
