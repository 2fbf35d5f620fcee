"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020, Eq. 1).

Each layer's head-averaged attention is mixed with the residual connection and renormalised,
A'_l = normalise(r I + (1 - r) mean_h A_l) (r = 0.5 in the paper), and the layers are chained,
R_l = A'_l R_{l-1}: row i of R says how much each input token contributes to position i.
`rollout_step` adds one layer, so the product is built while the layers stream by
(`layer_patterns`) and only one T x T map per layer is ever alive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import chex
import jax
import jax.numpy as jnp

from jaxinterp.attention.streaming import layer_patterns
from jaxinterp.edits import Edit

Array = jax.Array


def rollout_step(previous: Array | None, probs: Array, *, residual: float = 0.5) -> Array:
    """R_l [B, T, T] from R_{l-1} (None before the first layer) and the layer's probs [B, H, T, T]."""
    chex.assert_rank(probs, 4)
    length = probs.shape[-1]
    mixed = residual * jnp.eye(length) + (1 - residual) * jnp.mean(probs.astype(jnp.float32), axis=1)
    mixed = mixed / jnp.sum(mixed, axis=-1, keepdims=True)
    return mixed if previous is None else jnp.einsum("bij,bjk->bik", mixed, previous)


def attention_rollout(model: Any, inputs: Any, *, residual: float = 0.5, layers: Iterable[int] | None = None,
                      edits: Edit | tuple | None = ()) -> Array:
    """[B, T, T] rollout through `layers` (default all) of the model's forward on `inputs`."""
    rollout = None
    for pattern in layer_patterns(model, inputs, layers=layers, edits=edits):
        rollout = rollout_step(rollout, pattern.probs, residual=residual)
    return rollout
