"""Attention patterns one layer at a time, so a long sequence never holds every layer's T x T map.

One forward captures each block's queries and keys ([B, T, H, Dh] and [B, T, KV, Dh]: linear in
T); then each layer's pattern is recomputed by the model's own attention code (`attend`, with
the model's masks) when the caller asks for it, and can be reduced and dropped before the next.
Edits are honoured: those on `attn.q` / `attn.k` shaped the captured queries and keys, and
those on `attn.scores` / `attn.probs` are applied again to the recomputed pattern, so the
result is what the forward computed (checked against captured `attn.probs` in the tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxinterp.attention.checks import check_layers
from jaxinterp.edits import Edit, compose
from jaxinterp.models.attention import attend
from jaxinterp.models.decoder import frame
from jaxinterp.models.masks import MASKED
from jaxinterp.models.sites import Tap

Array = jax.Array


class Pattern(NamedTuple):
    """One layer's attention: probs [B, H, T, T] and the cells its softmax saw, visible
    [B, H, T, T] bool (real query rows only)."""

    layer: int
    probs: Array
    visible: Array


class _PatternTap(Tap):
    """A tap that leaves queries, keys and values alone (the captured ones are already edited)."""

    def __call__(self, name: str, x: Array, ctx: Any) -> Array:
        if name.endswith((".attn.q", ".attn.k", ".attn.v")):
            return x
        return super().__call__(name, x, ctx)


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
    batch = model.batch(inputs)
    edits = compose(edits)
    every = model._edits(edits)  # with any edits the model adds itself (e.g. a positional scheme's mask)
    run = model.run(batch, capture=[f"blocks.{i}.attn.{part}" for i in layers for part in ("q", "k")], edits=edits)
    windows = [config.window(i) if hasattr(config, "window") else None for i in range(config.num_layers)]
    shared = frame(batch, None, causal=config.causal, windows=windows)
    for layer in layers:
        prefix = f"blocks.{layer}"
        keys = run[f"{prefix}.attn.k"]
        tap = _PatternTap(edits=every, capture=(f"{prefix}.attn.scores", f"{prefix}.attn.probs"))
        attend(run[f"{prefix}.attn.q"], keys, jnp.zeros_like(keys), allowed=shared.mask(windows[layer]), tap=tap,
               prefix=prefix, ctx=shared.ctx.replace(layer=layer), scale=config.head_dim ** -0.5)
        visible = (tap.captured[f"{prefix}.attn.scores"] > MASKED / 2) & batch.mask[:, None, :, None]
        yield Pattern(layer, tap.captured[f"{prefix}.attn.probs"], visible)
