"""Values on the host, on one process or many.

Host-side code (choosing answer tokens, stopping generation, checking finiteness) reads arrays
with numpy. On a multi-host mesh an array spans devices of other processes, and numpy cannot
read it; `to_host` gathers it from every process instead (each process must call it together,
as they all run the same program).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def to_host(x: Any) -> np.ndarray:
    """The whole value of `x` as a numpy array on this host (gathered across processes if needed)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def tree_to_host(tree: Any) -> Any:
    """A pytree (a batch, a result) whose leaves host code can read: a leaf this process addresses
    whole is left as it is (no copy), one spread over other processes is gathered (`to_host`)."""
    return jax.tree.map(lambda x: x if getattr(x, "is_fully_addressable", True) else to_host(x), tree)
