"""Shared prefixes: run the slots that many variations of one batch share once, into a KV cache.

Activation patching (cells of a grid) runs one batch many times, each variation changing it
only from some slot on. In a causal decoder nothing before that slot can change, so the
unperturbed batch runs once into a KV cache and a variation continues from the cache at its
first changed slot, computing only the slots after it. The possible starts are bucketed to a
few lengths (one compiled program each; a variation continues from the longest bucket at or
before its own start). Rows that differ in many places (perturbation attribution's coalitions)
share deeper prefixes with each other: `jaxinterp.prefix_trie`.

A bidirectional model (masked diffusion, positional schemes) lets early slots see late ones,
so it shares nothing: `shares_prefix` is False and every variation starts at slot 0."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.errors import ArgumentError
from jaxinterp.models import Batch
from jaxinterp.sweep import sweep


def shares_prefix(model: Any) -> bool:
    """Whether a slot's activations depend on earlier slots only (a causal decoder)."""
    return bool(getattr(model.config, "causal", True))


def check_buckets(buckets: Any) -> None:
    """Raises ArgumentError unless `buckets` (the `prefix_buckets` argument) is an integer >= 1."""
    if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets < 1:
        raise ArgumentError(f"prefix_buckets: expected an integer >= 1, found {buckets!r}")


def bucket_starts(starts: Sequence[int], buckets: int) -> tuple[int, ...]:
    """At most `buckets` prefix lengths among the variations' `starts`, spread evenly over the
    distinct ones in order and always including the smallest (which every variation can use)."""
    distinct = np.sort(np.unique(np.asarray(starts, np.int64)))
    picks = np.unique(np.linspace(0, len(distinct) - 1, min(buckets, len(distinct))).round().astype(int))
    return tuple(int(distinct[i]) for i in picks)


def bucket_of(starts: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
    """Index into `buckets` (sorted) of the longest bucket at or before each start."""
    return np.searchsorted(np.asarray(buckets), np.asarray(starts), side="right") - 1


def padded_count(count: int) -> int:
    """`count` rounded up to 2^k or 3 * 2^k: variations padded to it (repeating the last) compile few
    distinct shapes however the counts vary, at most a third of them padding."""
    power = 1 << max(count - 1, 0).bit_length()
    return power * 3 // 4 if power >= 4 and count <= power * 3 // 4 else power


def sweep_buckets(program_for: Callable[[int], Callable], inputs: Any, variations: Any, starts: np.ndarray,
                  buckets: Sequence[int], **sweep_options: Any) -> np.ndarray:
    """`sweep(program_for(start), inputs, ...)` of every variation (a pytree of [N, ...] arrays) at its
    bucket's start (`bucket_of`), one sweep per bucket: [N] values. Each bucket's variations are
    padded to `padded_count` (repeating the last), so varying counts compile few shapes."""
    out = np.empty(len(starts), np.float64)
    bucket = bucket_of(starts, buckets)
    for k, start in enumerate(buckets):
        rows = np.flatnonzero(bucket == k)
        if not rows.size:
            continue
        padded = np.concatenate([rows, np.repeat(rows[-1:], padded_count(rows.size) - rows.size)])
        chunk = jax.tree.map(lambda x: np.asarray(x)[padded], variations)
        out[rows] = np.asarray(sweep(program_for(start), inputs, chunk, **sweep_options), np.float64)[:rows.size]
    return out


def cached_run(model: Any, batch: Batch) -> Any:
    """A run of `batch` that keeps its KV cache, for `resume`."""
    return model.run(batch, cache=model.empty_cache(batch.tokens.shape[0], batch.tokens.shape[1]))


def resume(model: Any, prefix: Any, batch: Batch, start: int, *, edits: Any = ()) -> Any:
    """The run of `batch` with `edits`, computing only slots from `start` on (traceable).

    `prefix` is `cached_run` of a batch equal to `batch` before slot `start`, where the edits
    change nothing. The returned `Run` covers every slot of `batch` (the logits and hidden states
    of earlier slots are the prefix run's), so that a metric reads it as a run of the whole batch.
    """
    if not start:
        return model.run(batch, edits=edits)
    rest = jax.tree.map(lambda x: x[:, start:], batch)
    run = model.run(rest, edits=edits, cache=prefix.cache.replace(length=jnp.int32(start)))
    joined = lambda before, after: jnp.concatenate([before[:, :start], after], axis=1)  # noqa: E731
    return run.replace(logits=joined(prefix.logits, run.logits), hidden=joined(prefix.hidden, run.hidden),
                       captured={}, batch=batch, cache=None)
