"""EVAS: broadcast the densest visual-sink head of a shallow layer to the layer's other heads.

Zhang et al., "Shallow Focus, Deep Fixes: Enhancing Shallow Layers Vision Attention Sinks to
Alleviate Hallucination in LVLMs" (EMNLP 2025; arXiv 2411.09968 as EAH); spec evas.md. In the
chosen layer, per batch row: score every column of the span (the image tokens, found from the
input's segments) by its sink score v_y (`jaxinterp.attention.sinks`, step 3), count the sinks
v_y > beta per head (step 4), take the head n* with the most (ties: lowest index; no sink in any
head: no change, step 5) and copy its probabilities over the other heads (step 6; all heads by
default, or the `targets` heads of lowest sink density). Values and W_O are unchanged (step 7).

Paper vs release (the spec's defaults are the paper's): layer 1 (0-indexed "Layer = 2"; the
release edits layer 15), beta = 0.002 (release 0.0008), the paper's column form (`form="code"`
for the release's), head 0 may be the source (`skip_head_zero=True` mimics the release's
`if k > 0`). The release acts at prefill only in effect (`apply_at="prefill"`); `every_step`
also edits each decode step. On a text-only model, any segment serves as the span.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxinterp.attention.checks import check_count, check_layers, check_segment
from jaxinterp.attention.rows import RowEdit, check_apply_at, own_keys
from jaxinterp.attention.sinks import FORMS, column_sink_scores, sink_density
from jaxinterp.attention.spans import require_tokens, span_mask
from jaxinterp.attention.streaming import layer_patterns
from jaxinterp.edits import Edit
from jaxinterp.errors import ArgumentError
from jaxinterp.models.sites import Context

Array = jax.Array


def broadcast_densest(probs: Array, density: Array, targets: Array | int, *, skip_head_zero: bool = False) -> Array:
    """Copies the densest head's probabilities over the `targets` heads of lowest density (steps 5-6).

    probs [B, H, T, S], density [B, H]. Rows whose densest head has density 0 (or is head 0,
    with `skip_head_zero`) are unchanged.
    """
    source = jnp.argmax(density, axis=-1)  # first maximum: ties go to the lowest index
    active = jnp.max(density, axis=-1) > 0
    if skip_head_zero:
        active = active & (source > 0)
    order = jnp.argsort(jnp.argsort(density, axis=-1, stable=True), axis=-1, stable=True)
    chosen = (order < targets) & active[:, None]
    copied = jnp.take_along_axis(probs, source[:, None, None, None], axis=1)
    return jnp.where(chosen[:, :, None, None], copied, probs)


@struct.dataclass
class EVAS(RowEdit):
    """EVAS on `blocks.{l}.attn.probs` of `layers` (build it with `evas`, which checks the arguments).

    Attributes:
      layers: the shallow layer(s) edited (paper: 1).
      beta: sink threshold on v_y (paper 0.002).
      targets: how many heads receive the source pattern (all by default; those of lowest
        sink density first; 0 changes nothing). An array leaf, like beta.
      span: the segment whose columns are scored (`image`; any segment on a text model).
      form: `paper` or `code` column score.
      apply_at: `prefill` (default) or `every_step`.
      skip_head_zero: the release's quirk of changing nothing when the source is head 0.
    """

    layers: tuple[int, ...] = struct.field(pytree_node=False)
    beta: Array | float = 0.002
    targets: Array | int = 1 << 30
    span: str = struct.field(pytree_node=False, default="image")
    form: str = struct.field(pytree_node=False, default="paper")
    apply_at: str = struct.field(pytree_node=False, default="prefill")
    skip_head_zero: bool = struct.field(pytree_node=False, default=False)

    def rewrite(self, probs: Array, visible: Array, ctx: Context) -> Array:
        keys = span_mask(self.span, ctx.key_segments)
        scores = column_sink_scores(probs, visible, keys, span_mask(self.span, ctx.segments),
                                    own=own_keys(ctx, visible), form=self.form)
        return broadcast_densest(probs, sink_density(scores, keys, self.beta), self.targets,
                                 skip_head_zero=self.skip_head_zero)


def evas(model: Any, *, layers: Iterable[int] = (1,), beta: float = 0.002, targets: int | None = None,
         span: str = "image", form: str = "paper", apply_at: str = "prefill", skip_head_zero: bool = False) -> EVAS:
    """The EVAS edit for `model` with the paper's defaults (layer 1, beta 0.002, all heads).

    `targets` is the number of heads that receive the densest head's pattern (None: all).
    """
    config = model.config
    if form not in FORMS:
        raise ArgumentError(f"form: expected one of {FORMS}, found {form!r}")
    check_apply_at(apply_at)
    count = config.num_heads if targets is None else check_count(targets, config.num_heads, argument="targets")
    return EVAS(layers=check_layers(layers, config.num_layers), beta=jnp.float32(beta), targets=jnp.int32(count),
                span=check_segment(span), form=form, apply_at=apply_at, skip_head_zero=skip_head_zero)


def sink_profile(model: Any, inputs: Any, *, span: str = "image", beta: float = 0.002, form: str = "paper",
                 layers: Iterable[int] | None = None, edits: Edit | tuple | None = ()) -> np.ndarray:
    """[L, B, H] sink density of every head over `span`, streamed layer by layer."""
    batch = model.batch(inputs)
    keys = require_tokens(span, batch.segments)
    densities = []
    for pattern in layer_patterns(model, batch, layers=layers, edits=edits):
        scores = column_sink_scores(pattern.probs, pattern.visible, keys, keys, form=form)
        densities.append(np.asarray(sink_density(scores, keys, beta)))
    return np.stack(densities)
