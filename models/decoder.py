"""What every block of a token-sequence forward shares: keys, edit context, masks, cache.

Without a cache the queries are their own keys; with one, the new tokens are described
in the cache at `length` and attend every slot. Families call `frame` once per forward,
pass `frame.ctx`, `frame.mask(window)` and `frame.write_at` to each block (through
`call_block`, which recomputes it in the backward pass when asked), and `finish` to store the blocks' new
key/value slots.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxinterp.models.batch import Batch, KVCache
from jaxinterp.models.masks import Mask, attention_mask
from jaxinterp.models.remat import recompute_in_backward
from jaxinterp.models.sites import Context, Tap

Array = jax.Array


@dataclasses.dataclass
class Frame:
    """Shared per-forward state: the (described) cache, the context, and one mask per window."""

    cache: KVCache | None
    ctx: Context
    masks: dict[int | None, Mask]
    write_at: Array | None

    def mask(self, window: int | None = None) -> Mask:
        return self.masks[window]

    def layer_cache(self, layer: int) -> tuple[Array, Array] | None:
        return None if self.cache is None else (self.cache.keys[layer], self.cache.values[layer])


def frame(batch: Batch, cache: KVCache | None, *, causal: bool, windows: Iterable[int | None] = (None,),
          decoding: bool = False) -> Frame:
    """The frame of a forward over `batch` (see the module docstring)."""
    length = batch.tokens.shape[1]
    if cache is None:
        keys, write_at = batch, None
        query_slots = key_slots = jnp.arange(length)
    else:
        cache = cache.describe(batch)
        keys, write_at = cache, cache.length
        query_slots, key_slots = cache.length + jnp.arange(length), jnp.arange(cache.size)
    masks = {
        window: Mask(attention_mask(
            query_slots=query_slots, key_slots=key_slots, query_positions=batch.positions,
            key_positions=keys.positions, key_mask=keys.mask, causal=causal, window=window,
        ), triangular=causal and cache is None)
        for window in set(windows)
    }
    return Frame(cache=cache, ctx=Context.of(batch, keys, decoding=decoding), masks=masks, write_at=write_at)


def finish(frame: Frame, slots: list[tuple[Array, Array] | None], length: int) -> KVCache | None:
    """The cache after the blocks wrote their new key/value `slots` for `length` tokens."""
    if frame.cache is None:
        return None
    return frame.cache.replace(
        keys=tuple(k for k, _ in slots), values=tuple(v for _, v in slots)
    ).advance(length)


def call_block(block: nn.Module, x: Array, *, tap: Tap, **inputs: Any) -> tuple[Array, Any]:
    """`block(x, tap=tap, **inputs)`; with `tap.remat`, recomputed in the backward pass.

    A rematerialised block keeps only its input for the backward pass and recomputes the rest
    (`models.remat`: `jax.checkpoint` saves nothing on XLA's CPU backend), so a gradient through
    a long sequence holds one block's activations at a time. The block runs as a pure function
    of its parameters; its sites are recorded by a forked tap and handed out as outputs (a
    record written from inside the recomputed function would leak its traced values).
    """
    if not tap.remat or block.is_initializing():
        return block(x, tap=tap, **inputs)
    unbound = block.clone(parent=None)

    def run(variables: Any, x: Array):
        inner = tap.fork()
        y, slots = unbound.apply(variables, x, tap=inner, **inputs)
        return y, slots, inner.captured, inner.finite

    y, slots, captured, finite = recompute_in_backward(run)(block.variables, x)
    tap.captured.update(captured)
    tap.finite.update(finite)
    return y, slots
