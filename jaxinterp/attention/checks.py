"""Argument checks shared by the attention methods: layers, head counts, ratios, spans."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from jaxinterp.errors import ArgumentError
from jaxinterp.models.sites import SEGMENTS


def check_layers(layers: Iterable[int], num_layers: int, *, argument: str = "layers") -> tuple[int, ...]:
    """The layer indices as a sorted tuple; an index outside [0, num_layers) is an error."""
    chosen = tuple(sorted({int(layer) for layer in layers}))
    bad = [layer for layer in chosen if not 0 <= layer < num_layers]
    if bad or not chosen:
        raise ArgumentError(f"{argument}: expected layer indices in [0, {num_layers}), found {list(layers)}")
    return chosen


def heads_from_ratio(ratio: float, num_heads: int, *, argument: str = "top_k_ratio") -> int:
    """Python's round(num_heads * ratio) (halves to even, as the ART release), for a ratio in (0, 1]."""
    if not 0 < ratio <= 1:
        raise ArgumentError(f"{argument}: expected a fraction of the heads in (0, 1], found {ratio!r}")
    return round(num_heads * ratio)


def check_count(count: int, limit: int, *, argument: str) -> int:
    """An integer in [0, limit]."""
    if not isinstance(count, (int, np.integer)) or not 0 <= count <= limit:
        raise ArgumentError(f"{argument}: expected an integer in [0, {limit}], found {count!r}")
    return int(count)


def check_segment(name: str, *, argument: str = "span") -> str:
    """A known segment name (spans come from the input's segments)."""
    if name not in SEGMENTS:
        raise ArgumentError(f"{argument}: expected a segment name, one of {', '.join(SEGMENTS)}; found {name!r}")
    return name
