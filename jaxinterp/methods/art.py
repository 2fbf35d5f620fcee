"""ART: replace the most uniform heads of shallow layers with the most local head's pattern.

Luo et al., "ART: Attention Replacement Technique to Improve Factuality in LLMs" (arXiv
2604.06393, ACL 2026); spec art.md, following the released `modify_attention.py`. In each chosen
layer, per batch row: rank the heads by the m-index (`jaxinterp.attention.uniformity`, Sec. 3.2),
then overwrite the probabilities of the k lowest-m (most uniform) heads with those of the
highest-m head (`mode="repeat"`, the code's REPEAT = 1) or with the mean of the k highest-m
heads (`mode="mean"`, REPEAT = 0). Values and W_O are unchanged (O_h = A_h V_h).

Where the release and the paper's wording disagree the spec decides: the code's environment
default ASCENDING = 1 does the opposite (overwrites the k most local heads with the most uniform
one); ART is ASCENDING = 0, the default here (`overwrite="uniform"`); `overwrite="local"` gives the
code's default. The code edits batch element 0 only; here every row is edited by its own
ranking. Generation: with the KV cache (`generate`) the edit runs at prefill only
(`apply_at="prefill"`) or also at every decode step on the single new row, whose m-index uses
the single-row reference U = 1/T (`every_step`); the reference code's no-cache decoding
(re-running the whole sequence each step) is `jaxinterp.methods.recompute.greedy`.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
from flax import struct

from jaxinterp.attention.checks import check_layers, heads_from_ratio
from jaxinterp.attention.rows import RowEdit, check_apply_at
from jaxinterp.attention.uniformity import BELOW_EPS, m_index
from jaxinterp.errors import ArgumentError
from jaxinterp.models.sites import Context

Array = jax.Array
MODES = ("repeat", "mean")
OVERWRITE = ("uniform", "local")


def replace_heads(probs: Array, scores: Array, count: Array | int, *, mode: str = "repeat") -> Array:
    """Overwrites the `count` lowest-scoring heads of each row with the highest-scoring head
    (`repeat`) or with the mean of the `count` highest-scoring heads (`mean`) (spec step 4).

    probs [B, H, T, S], scores [B, H]; `count` may be traced (no recompile for a new k). Ties
    rank by head index.
    """
    heads = probs.shape[1]
    rank = jnp.argsort(jnp.argsort(scores, axis=-1, stable=True), axis=-1, stable=True)  # 0 = lowest
    lowest = (rank < count)[:, :, None, None]
    if mode == "repeat":
        top = jnp.argmax(rank, axis=-1)
        source = jnp.take_along_axis(probs, top[:, None, None, None], axis=1)
    else:
        highest = (rank >= heads - count)[:, :, None, None]
        source = jnp.sum(jnp.where(highest, probs, 0.0), axis=1, keepdims=True) / jnp.maximum(count, 1)
    return jnp.where(lowest, source.astype(probs.dtype), probs)


@struct.dataclass
class ART(RowEdit):
    """ART on `blocks.{l}.attn.probs` of `layers` (build it with `art`, which checks the arguments).

    Attributes:
      layers: the shallow layers edited (code: 0 .. SHALLOW_LAYER - 1, default layer 0 only).
      heads: k, the number of heads replaced per layer (an array leaf: a new k does not recompile).
      eps: the m-index's folding threshold (code: 1e-6).
      mode: `repeat` (copy the single most local head, code default) or `mean`.
      overwrite: `uniform` (ART: overwrite the most uniform heads) or `local` (the code's
        ASCENDING = 1 default: overwrite the most local heads with the most uniform one).
      apply_at: `prefill` or `every_step` (see `jaxinterp.attention.rows`).
      below_eps: how the m-index counts cells below eps (`drop`, the code; or `clamp`).
    """

    layers: tuple[int, ...] = struct.field(pytree_node=False)
    heads: Array | int = 1
    eps: Array | float = 1e-6
    mode: str = struct.field(pytree_node=False, default="repeat")
    overwrite: str = struct.field(pytree_node=False, default="uniform")
    apply_at: str = struct.field(pytree_node=False, default="prefill")
    below_eps: str = struct.field(pytree_node=False, default="drop")

    def rewrite(self, probs: Array, visible: Array, ctx: Context) -> Array:
        uniformity = m_index(probs, visible, eps=self.eps, below_eps=self.below_eps)
        return replace_heads(probs, uniformity if self.overwrite == "uniform" else -uniformity, self.heads,
                             mode=self.mode)


def art(model, *, layers: Iterable[int] = (0,), top_k_ratio: float = 0.1, mode: str = "repeat",
        overwrite: str = "uniform", apply_at: str = "prefill", eps: float = 1e-6, below_eps: str = "drop") -> ART:
    """The ART edit for `model` with the code's defaults (layer 0, 10% of the heads, repeat).

    Args:
      model: the model it will run on (for the layer and head counts).
      layers: shallow layers to edit.
      top_k_ratio: fraction of the heads replaced, in (0, 1]; k = Python round(H * ratio), halves to
        even as in the release (the code reads a ratio above 0.999 as an absolute count: build
        `ART(heads=k)` directly for that).
      mode, overwrite, apply_at, eps, below_eps: see `ART`.
    """
    config = model.config
    if mode not in MODES:
        raise ArgumentError(f"mode: expected one of {MODES}, found {mode!r}")
    if overwrite not in OVERWRITE:
        raise ArgumentError(f"overwrite: expected one of {OVERWRITE}, found {overwrite!r}")
    if below_eps not in BELOW_EPS:
        raise ArgumentError(f"below_eps: expected one of {BELOW_EPS}, found {below_eps!r}")
    check_apply_at(apply_at)
    return ART(layers=check_layers(layers, config.num_layers), heads=jnp.int32(heads_from_ratio(top_k_ratio,
               config.num_heads)), eps=jnp.float32(eps), mode=mode, overwrite=overwrite, apply_at=apply_at,
               below_eps=below_eps)
