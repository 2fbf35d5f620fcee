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
from jaxinterp.host import to_host
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
    for name, batch in (("clean", clean), ("corrupted", corrupted)):
        positions, mask = to_host(batch.positions), to_host(batch.mask)
        misplaced = mask & (positions != np.arange(positions.shape[1]))
        if misplaced.any():  # activations are written by absolute position, read from a run by slot
            row, slot = (int(i[0]) for i in np.nonzero(misplaced))
            raise ArgumentError(
                f"{name}: patching needs every real token at the slot of its position (unpadded or right-padded "
                f"rows); row {row} holds position {positions[row, slot]} at slot {slot} (left padding?); "
                f"pass right-padded inputs, e.g. model.encode(texts, padding='right')")
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


def first_changed_slots(source: Batch, target: Batch, cells: dict[str, np.ndarray]) -> np.ndarray:
    """[cells] the first slot each cell's patch can change in a causal model: not before the first slot
    where the two inputs differ in any row (every site agrees before it), nor, for a cell with a
    position, before the first slot that holds that position or a later one in any row. At most the
    last slot, so that a continuation from it runs at least one."""
    fields = ("tokens", "mask", "positions")
    read = lambda batch: {name: to_host(getattr(batch, name)) for name in fields}  # noqa: E731
    source, target = read(source), read(target)
    slots = target["tokens"].shape[1]
    differ = np.any([source[name] != target[name] for name in fields], axis=0).any(axis=0)
    first = int(np.argmax(differ)) if differ.any() else slots - 1
    count = len(next(iter(cells.values())))
    if "position" not in cells:
        return np.full(count, first, np.int64)
    reaches = (target["mask"][None] & (target["positions"][None] >= cells["position"][:, None, None])).any(axis=1)
    at = np.where(reaches.any(axis=1), np.argmax(reaches, axis=1), slots - 1)
    return np.minimum(np.maximum(first, at), slots - 1)


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
