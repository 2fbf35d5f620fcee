"""Greedy decoding without a KV cache: every step re-runs the whole sequence.

This is how the reference implementations of ART (`greedy_generate`) and of the truncation
code decode, and so the reference that cached generation (`Model.generate`) is checked
against: with an edit that acts at prefill only, both give the same tokens and logits; with
one that acts at every step they differ by design (a cached step sees one new query row, a
recomputed step the whole sequence). One jitted loop: a fixed-width buffer (prompt + steps)
whose future columns are masked padding until they are written; no stopping at end-of-sequence.
A vision-language model re-reads its pixels every step, so a generated image placeholder token
would be spliced as an image token here but embedded as text by the cached loop.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxinterp.edits import Edit
from jaxinterp.errors import ArgumentError
from jaxinterp.models import Batch
from jaxinterp.models.sites import segment_id

Array = jax.Array


def _extend(prompt: Batch, steps: int) -> Batch:
    """The prompt with `steps` empty (masked, `pad`) columns on the right, at the next positions."""
    rows = prompt.tokens.shape[0]
    pad = lambda x, value: jnp.concatenate([x, jnp.full((rows, steps), value, x.dtype)], axis=1)  # noqa: E731
    following = prompt.positions[:, -1:] + 1 + jnp.arange(steps, dtype=jnp.int32)[None]
    return prompt.replace(
        tokens=pad(prompt.tokens, 0), mask=pad(prompt.mask, False),
        positions=jnp.concatenate([prompt.positions, following], axis=1),
        segments=pad(prompt.segments, segment_id("pad")), steps=pad(prompt.steps, 0),
        embeds=None if prompt.embeds is None else jnp.pad(prompt.embeds, ((0, 0), (0, steps), (0, 0))),
        embeds_mask=None if prompt.embeds_mask is None else pad(prompt.embeds_mask, False),
    )


@functools.partial(jax.jit, static_argnames=("steps",))
def _loop(model: Any, prompt: Batch, edits: tuple, *, steps: int) -> tuple[Array, Array]:
    length = prompt.tokens.shape[1]

    def body(step, state):
        batch, logits = state
        scores = model.apply(batch, edits=edits).logits[:, length - 1 + step]
        token = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        column = length + step
        batch = batch.replace(tokens=batch.tokens.at[:, column].set(token), mask=batch.mask.at[:, column].set(True),
                              segments=batch.segments.at[:, column].set(segment_id("generated")))
        return batch, logits.at[:, step].set(scores)

    logits = jnp.zeros((prompt.tokens.shape[0], steps, model.config.vocab_size), jnp.float32)
    batch, logits = jax.lax.fori_loop(0, steps, body, (_extend(prompt, steps), logits))
    return batch.tokens[:, length:], logits


def greedy(model: Any, prompt: Batch, max_new_tokens: int, *, edits: Edit | tuple | None = ()) -> tuple[Array, Array]:
    """Greedy continuation of a left-padded prompt by full forwards: (tokens [B, N], logits [B, N, V]).

    `logits[:, i]` are the scores that chose token i, as `Model.generate` would see them.
    """
    if not bool(jnp.all(prompt.mask[:, -1])):
        raise ArgumentError("prompt: expected a left-padded Batch (last column all real tokens)")
    if max_new_tokens < 1:
        raise ArgumentError(f"max_new_tokens: expected a positive integer, found {max_new_tokens!r}")
    return _loop(model, model.batch(prompt), model.check_edits(edits), steps=int(max_new_tokens))
