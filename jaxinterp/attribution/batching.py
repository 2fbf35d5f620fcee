"""The attribution methods' one batching helper: `sweep` inside one jitted program.

`sweep` vmaps a function over a stack of variations (noisy images, path points, masks). Called
directly it traces and compiles afresh on every call and runs its chunks from a Python loop;
here the variations are cut into chunks that each fit the sweep's memory budget, one `sweep`
(vmap) runs each chunk and `lax.map` runs the chunks in turn, all in one jitted program: a
second call with the same shapes and options reuses it, and the program holds one copy of
the function however many chunks there are. `fn` is a module-level function (hashable),
called as fn(*args, variation, **options): every array travels in `args` (params included,
never closed over), every static choice in `options`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxinterp.sweep import DEFAULT_BUDGET, chunk_size_for, sweep


@functools.partial(jax.jit, static_argnames=("fn", "options", "chunk_size"))
def swept(fn: Callable, args: tuple, variations: Any, *, options: tuple[tuple[str, Any], ...] = (),
          chunk_size: int | None = None) -> Any:
    """fn(*args, v, **dict(options)) for every variation v, stacked on a new leading axis.

    `chunk_size`: variations per vmapped chunk (default: as many as fit `sweep`'s memory budget).
    """
    keywords = dict(options)

    def one(args, v):
        return fn(*args, v, **keywords)

    count = jax.tree.leaves(variations)[0].shape[0]
    if chunk_size is None:
        chunk_size = chunk_size_for(jax.make_jaxpr(one)(args, jax.tree.map(lambda x: x[0], variations)).jaxpr,
                                    DEFAULT_BUDGET)
    size = min(chunk_size, count)
    chunks = -(-count // size)
    index = jnp.minimum(jnp.arange(chunks * size), count - 1).reshape(chunks, size)  # the last chunk repeats its end
    stacked = jax.tree.map(lambda x: x[index], variations)
    out = jax.lax.map(lambda chunk: sweep(one, args, chunk, chunk_size=size, progress=False), stacked)
    return jax.tree.map(lambda x: x.reshape(chunks * size, *x.shape[2:])[:count], out)
