"""What every attribution method receives (`Request`) and what `attribute` returns (`Attribution`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxinterp.attribution.passes import zero_deltas
from jaxinterp.attribution.targets import Target
from jaxinterp.models import Batch

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Request:
    """One attribution call, checked: the model, its batch, the target bound to that batch, the
    resolved site names (forward order), the region (`image` or `tokens`) and the active edits."""

    model: Any
    batch: Batch
    target: Target
    sites: tuple[str, ...]
    region: str
    edits: tuple

    @property
    def config(self) -> Any:
        return self.model.config

    def deltas(self) -> dict[str, Array]:
        """Zero deltas at every attributed site (the points gradients are taken at)."""
        return zero_deltas(self.model, self.batch, self.sites)


@dataclasses.dataclass(frozen=True)
class Attribution:
    """What `attribute` returns; float32 arrays, one map per attributed site.

    Attributes:
      method: the method's name.
      sites: the S attributed site names, in forward order (`()` for site-free methods).
      values: [B] the target's score of each row (for smoothed maps: the mean over the noisy copies).
      image: [S, B, N, rows, cols] a map over each image's patch grid, or None.
      tokens: [S, B, T] a map over the tokens of each row, or None.
      batch: the inputs as they ran.
    """

    values: Array
    image: Array | None = None
    tokens: Array | None = None
    method: str = ""
    sites: tuple[str, ...] = ()
    batch: Batch | None = None
