"""Attribution targets: the scalar whose gradient (or response to perturbation) is explained.

A target maps a `Run` to one score per batch row, [B]; the attributed objective is their sum
(rows do not interact in a forward, so each row's gradient is that of its own score).

Positions name the *explained token*. Under a next-token objective the token at position t
is predicted by the logits at t - 1; under a masked-token objective (masked-diffusion LMs) by
the logits at t itself, so the same target reads the right row of logits in both. Only the
objective decides this, never the attention mask (a positional scheme changes the mask).

    Tokens.at(12)                      a generated token (its logit, teacher-forced)
    answer_tokens(batch)               the sum of the answer's token logits (LLaVA-CAM's S)
    Contrast.at(14, 12)                Diffusion-CAM's target-minus-distractor objective
    Function(lambda run: ...)          any function of the outputs, one score per row
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxinterp.errors import ArgumentError
from jaxinterp.model import Run
from jaxinterp.models import Batch, segment_id

Array = jax.Array
SCORES = ("logit", "logprob", "prob")


def _rows(values, batch_size: int, name: str) -> Array:
    """An int array of shape [B, K] from an int, a list [K] or an array [B, K]."""
    array = np.asarray(values)
    if array.dtype.kind not in "iu":
        raise ArgumentError(f"{name}: expected integer positions or token ids, found {array.dtype}")
    array = np.atleast_1d(array)
    if array.ndim == 1:
        array = np.broadcast_to(array[None], (batch_size, array.shape[0]))
    if array.ndim != 2 or array.shape[0] != batch_size:
        raise ArgumentError(f"{name}: expected an int, a list, or a [{batch_size}, K] array, found shape {array.shape}")
    return jnp.asarray(array, jnp.int32)


def _check_positions(positions: np.ndarray, batch: Batch, next_token: bool, name: str) -> None:
    """Every used position (>= 0) must be a real token of its row with logits that predict it."""
    length = batch.tokens.shape[1]
    mask = np.asarray(batch.mask)
    for row, pos in zip(*np.nonzero(positions >= 0)):
        p = int(positions[row, pos])
        if p >= length:
            raise ArgumentError(f"{name}: position {p} is outside the sequence of {length} tokens (row {row})")
        if not mask[row, p]:
            raise ArgumentError(f"{name}: position {p} of row {row} is padding, not a token")
        if next_token and p == 0:
            raise ArgumentError(f"{name}: position 0 has no logits predicting it in a next-token model; "
                                "explain a later token")


def _logit_rows(logits: Array, positions: Array, next_token: bool) -> Array:
    """[B, K, V] float32 logits that predict the tokens at `positions` [B, K] (padding -1 reads row 0)."""
    rows = jnp.maximum(positions - int(next_token), 0)
    return jnp.take_along_axis(logits.astype(jnp.float32), rows[..., None], axis=1)


def _score(logits: Array, ids: Array, score: str) -> Array:
    """[B, K] score of token `ids` [B, K] under `logits` [B, K, V]: logit, log-probability or probability."""
    chosen = jnp.take_along_axis(logits, ids[..., None], axis=-1)[..., 0]
    if score == "logit":
        return chosen
    log_p = chosen - jax.nn.logsumexp(logits, axis=-1)
    return log_p if score == "logprob" else jnp.exp(log_p)


@struct.dataclass
class Tokens:
    """Sum of the scores of tokens `ids` at `positions` (one position: a generated token; all the
    answer's positions: the teacher-forced answer, LLaVA-CAM's S = sum_t z_t[y_t]).

    Attributes:
      positions: [B, K] int32 explained positions; -1 pads rows with fewer positions.
      ids: [B, K] int32 token ids to score; None scores the batch's own tokens there.
      score: `logit` (the spec's pre-softmax logit), `logprob` or `prob` (deletion/insertion curves).
    """

    positions: Array
    ids: Array | None = None
    score: str = struct.field(pytree_node=False, default="logit")

    @classmethod
    def at(cls, positions, ids=None, *, score: str = "logit") -> Tokens:
        """A target from an int, a list or a [B, K] array of positions (ids likewise); rows broadcast at `bind`."""
        if score not in SCORES:
            raise ArgumentError(f"score: expected one of {SCORES}, found {score!r}")
        ids = None if ids is None else np.atleast_1d(np.asarray(ids))
        return cls(positions=np.atleast_1d(np.asarray(positions)), ids=ids, score=score)

    def bind(self, batch: Batch, next_token: bool) -> Tokens:
        """The target with [B, K] arrays for this batch, checked against it."""
        positions = _rows(self.positions, batch.tokens.shape[0], "target positions")
        _check_positions(np.asarray(positions), batch, next_token, "target")
        ids = jnp.take_along_axis(batch.tokens, jnp.maximum(positions, 0), axis=1) if self.ids is None else (
            _rows(self.ids, batch.tokens.shape[0], "target ids"))
        chex.assert_equal_shape([positions, ids])
        return self.replace(positions=positions, ids=ids)

    def values(self, run: Run, next_token: bool) -> Array:
        scores = _score(_logit_rows(run.logits, self.positions, next_token), self.ids, self.score)
        return jnp.sum(jnp.where(self.positions >= 0, scores, 0.0), axis=1)


@struct.dataclass
class Contrast:
    """Diffusion-CAM's contrastive objective S = s(t) - s(t') (spec step 4).

    `whole_vocabulary=True` is the reference code's s(t) = sum_v z[t, v]; False is the paper's
    class-specific wording s(t) = z[t, y_t], with y the token ids at t and t'.

    Attributes:
      positions: [B, 2] int32, (target t, distractor t') per row.
      ids: [B, 2] int32 token ids for the class-specific variant (None: the batch's tokens).
      whole_vocabulary: which variant (see above).
    """

    positions: Array
    ids: Array | None = None
    whole_vocabulary: bool = struct.field(pytree_node=False, default=True)

    @classmethod
    def at(cls, target, distractor, ids=None, *, whole_vocabulary: bool = True) -> Contrast:
        """A contrast between the token at `target` and the one at `distractor` (ints, or one per row)."""
        pair = np.stack(np.broadcast_arrays(np.asarray(target), np.asarray(distractor)), axis=-1)
        return cls(positions=pair, ids=None if ids is None else np.asarray(ids), whole_vocabulary=whole_vocabulary)

    def bind(self, batch: Batch, next_token: bool) -> Contrast:
        tokens = Tokens(positions=self.positions, ids=self.ids).bind(batch, next_token)
        if tokens.positions.shape[1] != 2:
            raise ArgumentError("contrast target: expected (target, distractor) positions, "
                                f"found {tokens.positions.shape[1]}")
        return self.replace(positions=tokens.positions, ids=tokens.ids)

    def values(self, run: Run, next_token: bool) -> Array:
        logits = _logit_rows(run.logits, self.positions, next_token)
        scores = jnp.sum(logits, axis=-1) if self.whole_vocabulary else _score(logits, self.ids, "logit")
        return scores[:, 0] - scores[:, 1]


@struct.dataclass
class Function:
    """Any function of the outputs: `fn(run)` returns one score per row [B] (or a scalar when B = 1).
    The run holds logits, last hidden states and the attributed sites under `run.captured`."""

    fn: Callable[[Run], Array] = struct.field(pytree_node=False)

    def bind(self, batch: Batch, next_token: bool) -> Function:
        return self

    def values(self, run: Run, next_token: bool) -> Array:
        out = jnp.asarray(self.fn(run), jnp.float32)
        rows = run.batch.tokens.shape[0]
        if out.shape not in ((rows,), ()) or (out.ndim == 0 and rows != 1):
            raise ArgumentError(f"target function: expected one score per row, shape ({rows},), found {out.shape}")
        return jnp.reshape(out, (rows,))


Target = Tokens | Contrast | Function


def answer_tokens(batch: Batch, *, score: str = "logit") -> Tokens:
    """The teacher-forced answer of each row: every token of segment `answer` (or `generated`)."""
    segments = np.asarray(batch.segments)
    is_answer = np.isin(segments, [segment_id("answer"), segment_id("generated")]) & np.asarray(batch.mask)
    if not is_answer.any(axis=1).all():
        raise ArgumentError("target: some rows have no answer tokens (segment 'answer' or 'generated'); encode the "
                            "answer with `multimodal.encode(..., answers=...)` or pass target=Tokens.at(position)")
    width = int(is_answer.sum(axis=1).max())
    positions = np.full((len(segments), width), -1, np.int32)
    for row, found in enumerate(is_answer):
        where = np.flatnonzero(found)
        positions[row, :len(where)] = where
    return Tokens.at(positions, score=score)
