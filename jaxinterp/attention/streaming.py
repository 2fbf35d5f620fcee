"""Attention patterns one layer at a time, so a long sequence never holds every layer's T x T map.

One forward of the model's own program captures every chosen block's input (`resid_pre`,
[B, T, D]: linear in T); then layer l's pattern is the `attn.probs` (and `attn.scores`) of
the same program pinned at `blocks.{l}.resid_pre` (`Pin`) and returning only those two
captures, so XLA runs block l alone. Masks, windows, positional schemes, default edits and
the caller's edits are the model's own, never rebuilt here, so the result is what the forward
computed (checked against captured `attn.probs` in the tests).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import jax

from jaxinterp.attention.checks import check_layers
from jaxinterp.edits import Edit, Pin
from jaxinterp.models.masks import MASKED

Array = jax.Array


class Pattern(NamedTuple):
    """One layer's attention: probs [B, H, T, T] and the cells its softmax saw, visible
    [B, H, T, T] bool (real query rows only)."""

    layer: int
    probs: Array
    visible: Array


def visible_keys(scores: Array) -> Array:
    """[B, H, T, S] bool: the keys each query's softmax saw, read from the captured (or an
    edit's) `attn.scores`: every mask (causal, window, padding, a scheme's) leaves MASKED there."""
    return scores > MASKED / 2


@functools.partial(jax.jit, static_argnames=("layer",))
def _pattern(model: Any, batch: Any, edits: tuple, entry: Array | None, *, layer: int) -> tuple[Array, Array]:
    prefix = f"blocks.{layer}"
    pinned = () if entry is None else (Pin(f"{prefix}.resid_pre", entry),)
    run = model.apply(batch, edits=(*edits, *pinned), capture=(f"{prefix}.attn.scores", f"{prefix}.attn.probs"))
    visible = visible_keys(run[f"{prefix}.attn.scores"]) & batch.mask[:, None, :, None]
    return run[f"{prefix}.attn.probs"], visible


def layer_patterns(model: Any, inputs: Any, *, layers: Iterable[int] | None = None,
                   edits: Edit | tuple | None = ()) -> Iterator[Pattern]:
    """Yields the `Pattern` of each chosen decoder layer, in order.

    Args:
      model: a `jaxinterp.Model` of a decoder (or a vision-language model's decoder).
      inputs: anything `model.run` accepts.
      layers: the layers to yield (default all).
      edits: edits of the forward (their effect on the patterns is reproduced).
    """
    config = model.config
    layers = check_layers(range(config.num_layers) if layers is None else layers, config.num_layers)
    batch, edits = model.batch(inputs), model.check_edits(edits)
    entries = model.run(batch, capture=[f"blocks.{i}.resid_pre" for i in layers if i > 0], edits=edits).captured
    for layer in layers:
        probs, visible = _pattern(model, batch, edits, entries.get(f"blocks.{layer}.resid_pre"), layer=layer)
        yield Pattern(layer, probs, visible)
