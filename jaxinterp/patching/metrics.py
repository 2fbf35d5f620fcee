"""Patching metrics: scalar functions of a `Run`, read at each row's last real token.

A metric maps the `Run` of a (patched) forward to one number, averaged over the batch rows,
so that it can be swept over patching cells and differentiated by `Model.grad`. The
normalised patching score turns metric values into "fraction of the clean behaviour
restored": 0 at the corrupted run, 1 at the clean run.
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.errors import ArgumentError

Array = jax.Array
Metric = Callable[..., Array]


def last_logits(run) -> Array:
    """Float32 logits [B, V] at the last real token of each row (left- or right-padded batches)."""
    mask = run.batch.mask
    last = mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    return jnp.take_along_axis(run.logits, last[:, None, None], axis=1)[:, 0]


def _ids(tokens, name: str) -> np.ndarray:
    ids = np.atleast_1d(np.asarray(tokens))
    if ids.dtype.kind not in "iu" or ids.ndim != 1:
        raise ArgumentError(f"{name}: expected a token id or a 1-D array of ids (one per row), found {ids.dtype} {ids.shape}")
    return ids.astype(np.int32)


def _per_row(logits: Array, ids: np.ndarray) -> Array:
    chex.assert_rank(logits, 2)
    return jnp.take_along_axis(logits, jnp.broadcast_to(jnp.asarray(ids), logits.shape[:1])[:, None], axis=1)[:, 0]


def logit_diff(answer, wrong) -> Metric:
    """Mean over rows of logit[answer] - logit[wrong] at the last real token (ids: one, or one per row)."""
    answer, wrong = _ids(answer, "answer"), _ids(wrong, "wrong")

    def metric(run) -> Array:
        logits = last_logits(run)
        return jnp.mean(_per_row(logits, answer) - _per_row(logits, wrong))

    metric.label = "logit difference"
    return metric


def target_probability(target) -> Metric:
    """Mean over rows of the softmax probability of `target` (one id, or one per row) at the last real token."""
    target = _ids(target, "target")

    def metric(run) -> Array:
        return jnp.mean(_per_row(jax.nn.softmax(last_logits(run), axis=-1), target))

    metric.label = "target probability"
    return metric


def normalised(values, clean: float, corrupted: float):
    """(values - corrupted) / (clean - corrupted): 0 where the corrupted behaviour stays, 1 where the clean returns."""
    if clean == corrupted:
        raise ArgumentError(f"metric: the clean and corrupted runs give the same value ({clean}); nothing to normalise by")
    return (np.asarray(values) - corrupted) / (clean - corrupted)
