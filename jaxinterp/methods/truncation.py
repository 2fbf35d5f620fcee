"""Image-token truncation after a layer (FastV-style masking) and the sweep over that layer.

Zhang et al., "From Redundancy to Relevance" (NAACL 2025), Algorithm C (spec
llava_cam_infoflow.md), after FastV (Chen et al., ECCV 2024): layers 0..K-1 run unchanged; from
layer K on, the attention mask hides every image key except the R kept ones, chosen as the
top-R image tokens in the head-averaged attention of the last prompt query at layer K - 1
(R = 0, the paper's setting, hides them all; K = 0 keeps a random R-subset, as the code does).
Tokens are not deleted and positions do not change.

The kept set is data: a [B, N] mask over each row's image tokens in order, so it finds its
tokens in any layout (left padding, a KV cache) and the edit works inside `generate` at prefill
and at every decode step (the reference implementation could not use the cache). K is an array
leaf, so `truncation_sweep` runs all K in one `vmap`-ed `sweep` with one compiled program.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxinterp.attention.checks import check_count, check_segment
from jaxinterp.attention.spans import require_tokens
from jaxinterp.attention.streaming import layer_patterns
from jaxinterp.edits import Edit
from jaxinterp.errors import ArgumentError
from jaxinterp.models import Batch
from jaxinterp.models.masks import MASKED
from jaxinterp.models.sites import Context, segment_id
from jaxinterp.sweep import sweep

Array = jax.Array
OUTPUT_SEGMENTS = ("answer", "generated")  # the output: "the last query" is the token before it


@struct.dataclass
class Truncate(Edit):
    """Hides the span's keys from layer `start` on, except the `keep`-marked ones.

    Attributes:
      start: K, the first truncated layer (an array leaf; K >= the layer count changes nothing).
      keep: optional [B, N] bool over each row's span tokens in order (True = still visible);
        None hides them all (R = 0).
      span: the segment truncated (`image`).
    """

    start: Array | int
    keep: Array | None = None
    span: str = struct.field(pytree_node=False, default="image")

    @property
    def sites(self) -> tuple[str, ...]:
        return ("blocks.*.attn.scores",)

    def __call__(self, scores: Array, ctx: Context) -> Array:
        inside = ctx.key_segments == segment_id(self.span)  # [B, S]
        hidden = inside
        if self.keep is not None:
            order = jnp.clip(jnp.cumsum(inside, axis=-1) - 1, 0, self.keep.shape[-1] - 1)
            hidden = inside & ~jnp.take_along_axis(self.keep, order, axis=-1)
        hide = (ctx.layer >= self.start) & hidden[:, None, None, :]
        return jnp.where(hide, MASKED, scores)


def last_query(batch: Batch) -> Array:
    """[B] index of each row's last prompt query: the last real token before the first answer /
    generated token (the last real token when there is none)."""
    output = jnp.isin(batch.segments, jnp.array([segment_id(s) for s in OUTPUT_SEGMENTS])) & batch.mask
    length = batch.tokens.shape[1]
    first_output = jnp.where(jnp.any(output, axis=-1), jnp.argmax(output, axis=-1), length)
    prompt = batch.mask & (jnp.arange(length)[None] < first_output[:, None])
    return length - 1 - jnp.argmax(prompt[:, ::-1], axis=-1)


def keep_top(model: Any, inputs: Any, *, start: int, count: int, span: str = "image", seed: int = 0,
             edits: Edit | tuple | None = ()) -> Array | None:
    """[B, N] mask of the `count` span tokens to keep from layer `start` on (None when count = 0).

    The top-`count` span tokens by the last prompt query's head-averaged attention at layer
    start - 1 (step 3; a start beyond the last layer, where nothing is truncated, reads the last
    layer), in the forward with the caller's `edits`; at start = 0 a random subset drawn with
    `seed` (the code's rule), one draw per span token in order shared by every row, so a row
    keeps what it keeps alone. Ties: earlier token.
    """
    batch = model.batch(inputs)
    inside = np.asarray(require_tokens(check_segment(span), batch.segments))
    check_count(count, int(inside.sum(axis=1).min()), argument="count")
    if count == 0:
        return None
    width = int(inside.sum(axis=1).max())
    if start == 0:
        draws = np.asarray(jax.random.uniform(jax.random.key(seed), (width,)))
        scores = [draws[:n] for n in inside.sum(axis=1)]
    else:
        layer = min(start, model.config.num_layers) - 1
        probs = next(layer_patterns(model, batch, layers=[layer], edits=edits)).probs
        weights = np.asarray(jnp.mean(probs, axis=1)[jnp.arange(inside.shape[0]), last_query(batch)])  # [B, S]
        scores = [weights[row, columns] for row, columns in enumerate(inside)]
    keep = np.zeros((inside.shape[0], width), bool)
    for row, values in enumerate(scores):
        keep[row, np.argsort(-values, kind="stable")[:count]] = True
    return jnp.asarray(keep)


def check_starts(starts: Sequence[int]) -> list[int]:
    """First truncated layers as ints; each must be >= 0 (one beyond the last layer truncates nothing)."""
    bad = [k for k in starts if k < 0]
    if bad or not starts:
        raise ArgumentError(f"start: expected layer indices >= 0, found {list(starts)}")
    return [int(k) for k in starts]


def truncate(model: Any, inputs: Any, *, start: int, count: int = 0, span: str = "image", seed: int = 0,
             edits: Edit | tuple | None = ()) -> Truncate:
    """The truncation edit for these inputs: the span hidden from layer `start` on, keeping the
    `count` tokens `keep_top` picks under `edits`, the edits it will run with (R = count; 0 hides them all)."""
    check_starts([start])
    return Truncate(start=jnp.int32(start), keep=keep_top(model, inputs, start=start, count=count, span=span,
                                                          seed=seed, edits=edits), span=check_segment(span))


def answer_scores(logits: Array, batch: Batch) -> tuple[Array, Array]:
    """Teacher-forced answer log-prob [B] (sum over the output tokens, segment `answer` or
    `generated`) and exact match [B] (every output token is the argmax: what greedy decoding
    would produce). Labelling the output `generated` keeps prefill-only edits off its rows, as
    in cached generation."""
    output = jnp.isin(batch.segments[:, 1:], jnp.array([segment_id(s) for s in OUTPUT_SEGMENTS]))
    answer = output & batch.mask[:, 1:]
    targets, logits = batch.tokens[:, 1:], logits[:, :-1]
    chosen = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)
    hit = jnp.argmax(logits, axis=-1) == targets
    return jnp.sum(jnp.where(answer, chosen, 0.0), axis=-1), jnp.all(hit | ~answer, axis=-1)


def truncation_sweep(model: Any, inputs: Any, starts: Sequence[int], *, count: int = 0, span: str = "image",
                     seed: int = 0, chunk_size: int | None = None, edits: Edit | tuple | None = ()) -> dict[str, Any]:
    """Answer log-prob and exact match for every first truncated layer K in `starts`.

    `inputs` hold prompts with their answers (segment `answer`, e.g. from
    `jaxinterp.multimodal.encode(..., answers=...)`); `count` is R. All K run as one `sweep`
    (`vmap` over K and its kept set, `chunk_size` K at a time). Returns
    `{"starts": [K], "log_prob": [K, B], "correct": [K, B]}`.
    """
    batch = model.batch(inputs)
    require_tokens("answer", batch.segments)
    starts = check_starts(starts)
    keeps = [keep_top(model, batch, start=k, count=count, span=span, seed=seed, edits=edits) for k in starts]
    extra = model.check_edits(edits)
    variations = {"start": jnp.asarray(starts, jnp.int32)}
    if count:
        variations["keep"] = jnp.stack(keeps)

    def scored(batch: Batch, variation: dict) -> tuple[Array, Array]:
        edit = Truncate(start=variation["start"], keep=variation.get("keep"), span=span)
        logits = model.apply(batch, edits=(*extra, edit)).logits
        return answer_scores(logits, batch)

    log_prob, correct = sweep(scored, batch, variations, chunk_size=chunk_size)
    return {"starts": np.asarray(starts), "log_prob": np.asarray(log_prob), "correct": np.asarray(correct)}
