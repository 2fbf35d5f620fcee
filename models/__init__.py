"""Model families as pure functions of explicit parameters.

Each family is one configuration dataclass plus one Flax module whose `__call__` takes
`(batch, tap, cache, decoding)` and returns an `Output` (logits, last hidden states, cache). `forward` wraps any of them
into the library-wide contract

    forward(config, params, batch, *, edits=(), deltas=None, capture=(), cache=None)
        -> (Output, captured)

which is safe under `jit`, `grad` and `vmap`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxinterp.models import clip_vision, gpt2, llama, llava, moa, registry, siglip_vision
from jaxinterp.models.batch import Batch, KVCache, Output, make_batch
from jaxinterp.models.registry import config_from_dict, config_from_hf, config_to_dict
from jaxinterp.models.sites import SEGMENTS, Context, Tap, segment_id

Array = jax.Array

# Every family jaxinterp ships, registered here and nowhere else (one line each, so parallel
# additions merge cleanly). Adding a family: see "Adding a model family" in the README.
registry.register(llama.FAMILY)
registry.register(gpt2.FAMILY)
registry.register(moa.FAMILY)
registry.register(clip_vision.FAMILY)
registry.register(siglip_vision.FAMILY)
registry.register(llava.FAMILY)


def forward(
    config: Any,
    params: Mapping[str, Any],
    batch: Batch,
    *,
    edits: Sequence[Any] = (),
    deltas: Mapping[str, Array] | None = None,
    capture: Sequence[str] = (),
    cache: KVCache | None = None,
    decoding: bool = False,
    record_all: bool = False,
    check_finite: bool = False,
    remat: bool = False,
) -> tuple[Output, dict[str, Array]]:
    """Runs a model of any family through its sites (see the module docstring); `remat`
    recomputes each block in the backward pass (`decoder.call_block`)."""
    for edit in edits:
        batch = edit.inputs(batch, decoding)
    tap = Tap(edits=tuple(edits), deltas=deltas, capture=tuple(capture), record_all=record_all,
              check_finite=check_finite, remat=remat)
    output = config.module().apply({"params": params}, batch, tap, cache, decoding)
    return (output.replace(finite=tap.finite) if check_finite else output), tap.captured


def example_batch(config: Any) -> Batch:
    """A small batch that exercises every part of a model (its family's `example_batch`)."""
    return config.example_batch()


def init_params(config: Any, key: Array, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Randomly initialised parameters of a family config (for tests and training from scratch)."""
    params = config.module().init(key, example_batch(config), Tap())["params"]
    return jax.tree.map(lambda x: x.astype(dtype), params)


def abstract_params(config: Any, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Shapes and dtypes of the parameters of a family config, computed without allocating them."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0), dtype))


__all__ = [
    "SEGMENTS", "Batch", "Context", "KVCache", "Output", "Tap", "abstract_params",
    "config_from_dict", "config_from_hf", "config_to_dict", "example_batch", "forward", "init_params", "make_batch", "segment_id",
]
