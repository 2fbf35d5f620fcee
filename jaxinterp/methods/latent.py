"""Latent (continuous-thought) reasoning: the Coconut and CODI decode loops on any causal model.

Coconut (Hao et al. 2024; spec 0): after `question <bot>`, K latent slots take as input
embedding the last-layer hidden state (after the final norm, the vector the LM head reads)
of the position before them, z_j = h^(L)_{slot_j - 1}; then `<eot>` and the answer are
decoded. CODI (Shen et al. 2025) passes each hidden state through a projection
(Linear -> GELU -> Linear -> LayerNorm) before feeding it back.

Thoughts are input embeddings (`Batch.embeds`, as Coconut's `inputs_embeds`): `SlotTransform`
is an edit of the inputs that reads the embeddings at the latent slots, maps them (write
thoughts, or any intervention of `latent_interventions`) and writes them back, so thoughts
and interventions compose like other edits and the answer is decoded by the ordinary jitted
generator. Slots are absolute
positions, so the same edit serves the prompt forward and is a no-op in decode steps.

    prompt, slots = latent_prompt(ids_of_questions, k=6, bot=..., latent=..., eot=..., pad=...)
    z = continuous_thoughts(model, prompt, slots)                         # [B, K, D]
    out = model.generate(prompt, 8, edits=write_thoughts(z, slots))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxinterp.edits import Edit
from jaxinterp.errors import ArgumentError
from jaxinterp.models import Batch, make_batch

Array = jax.Array


@struct.dataclass
class SlotTransform(Edit):
    """Replaces the input embeddings z [B, K, D] at absolute `positions` [B, K] by `fn(z, args)`.

    An edit of the inputs (`Edit.inputs`): it writes `Batch.embeds` at the slots (setting
    `embeds_mask` there), so a thought means what `inputs_embeds` means in every family: it
    replaces the token embedding and the family's position embedding is still added (GPT-2).
    Transforms read the embeddings written by the edits before them (`write_thoughts` first).
    Slots whose position is not in the forward (decode steps, or -1) are left alone.
    """

    positions: Array
    fn: Callable[[Array, Any], Array] = struct.field(pytree_node=False)
    args: Any = None

    @property
    def sites(self) -> tuple[str, ...]:
        return ()

    def inputs(self, batch: Batch, decoding: bool) -> Batch:
        if decoding:
            return batch
        hit = (batch.positions[:, :, None] == self.positions[:, None, :]) & (self.positions[:, None, :] >= 0)
        hit = hit & batch.mask[:, :, None]
        at_slot = jnp.any(hit, axis=-1)
        if batch.embeds is None:
            if self.fn is not _replace:
                raise ArgumentError(f"edit {type(self).__name__}: transforms thoughts, but the batch carries no input "
                                    "embeddings at its slots; put write_thoughts(...) before it")
            embeds = jnp.zeros((*batch.tokens.shape, self.args.shape[-1]), self.args.dtype)
            written = jnp.zeros(batch.tokens.shape, bool)
        else:
            embeds = batch.embeds
            written = jnp.ones(batch.tokens.shape, bool) if batch.embeds_mask is None else batch.embeds_mask
        weights = hit.astype(embeds.dtype)
        z = jnp.einsum("btk,btd->bkd", weights, embeds)
        new = self.fn(z, self.args).astype(embeds.dtype)
        chex.assert_equal_shape([z, new])
        embeds = jnp.where(at_slot[..., None], jnp.einsum("btk,bkd->btd", weights, new), embeds)
        return batch.replace(embeds=embeds, embeds_mask=written | at_slot)


def _replace(z: Array, vectors: Array) -> Array:
    return vectors


def write_thoughts(vectors: Array, slots: Array) -> SlotTransform:
    """The edit that writes thoughts `vectors` [B, K, D] into the latent `slots` [B, K]."""
    return SlotTransform(positions=jnp.asarray(slots, jnp.int32), fn=_replace, args=jnp.asarray(vectors))


def latent_prompt(questions: Sequence[Sequence[int]], *, k: int, bot: int, latent: int, eot: int, pad: int,
                  suffix: Sequence[int] = ()) -> tuple[Batch, Array]:
    """Left-padded `question <bot> <latent>*k <eot> suffix` rows (spec 0.2) and their slot positions [B, k]."""
    if k < 0:
        raise ArgumentError(f"k: expected a number of latent slots >= 0, found {k}")
    rows = [list(q) + [bot] + [latent] * k + [eot] + list(suffix) for q in questions]
    width = max(len(r) for r in rows)
    tokens = np.array([[pad] * (width - len(r)) + r for r in rows], np.int32)
    mask = np.array([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    slots = np.array([[len(q) + 1 + j for j in range(k)] for q in questions], np.int32).reshape(len(rows), k)
    return make_batch(tokens, mask), jnp.asarray(slots)


@struct.dataclass
class CodiProjection:
    """CODI's projection of a hidden state before it is fed back: Linear -> GELU -> Linear -> LayerNorm."""

    w1: Array
    b1: Array
    w2: Array
    b2: Array
    scale: Array
    bias: Array

    @classmethod
    def init(cls, key: Array, dim: int, hidden: int) -> CodiProjection:
        """Random initialisation (LeCun normal); `hidden` is CODI's prj_dim (768 for GPT-2)."""
        k1, k2 = jax.random.split(key)
        return cls(w1=jax.random.normal(k1, (dim, hidden)) / np.sqrt(dim), b1=jnp.zeros(hidden),
                   w2=jax.random.normal(k2, (hidden, dim)) / np.sqrt(hidden), b2=jnp.zeros(dim),
                   scale=jnp.ones(dim), bias=jnp.zeros(dim))

    def __call__(self, h: Array) -> Array:
        y = jax.nn.gelu(h @ self.w1 + self.b1) @ self.w2 + self.b2
        mean, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
        return (y - mean) * jax.lax.rsqrt(var + 1e-5) * self.scale + self.bias


def thoughts_forward(model: Any, prompt: Batch, slots: Array, projection: CodiProjection | None,
                     edits: tuple = ()) -> Array:
    """The thoughts [B, K, D] of the Coconut loop (CODI's with a projection): K forwards, the j-th
    with z_1..z_{j-1} written, reading z_j = (projected) final-norm state at slot_j - 1.

    Pure and differentiable (training backpropagates through the thoughts, as Coconut does).
    """
    batch, k = slots.shape
    rows = jnp.arange(batch)
    index_of = jnp.argmax(prompt.positions[:, :, None] == slots[:, None, :], axis=1)  # [B, K] column of each slot

    def step(j, z):
        written = jnp.where(jnp.arange(k)[None, :] < j, slots, -1)
        captured = model.apply(prompt, capture=("final_norm",), edits=(write_thoughts(z, written), *edits)).captured
        h = captured["final_norm"][rows, index_of[:, j] - 1].astype(jnp.float32)
        h = h if projection is None else projection(h)
        return z.at[:, j].set(h)

    z = jnp.zeros((batch, k, model.config.hidden_size), jnp.float32)
    return jax.lax.fori_loop(0, k, step, z) if k else z


_thoughts = jax.jit(thoughts_forward)


def continuous_thoughts(model, prompt: Batch, slots: Array, *, projection: CodiProjection | None = None,
                        edits: Edit | Sequence[Edit] | None = ()) -> Array:
    """Thoughts [B, K, D] of `model` for a prompt from `latent_prompt` (Coconut; CODI with `projection`)."""
    chex.assert_rank(slots, 2)
    return _thoughts(model, model.batch(prompt), jnp.asarray(slots, jnp.int32), projection, model.check_edits(edits))


@jax.jit
def _answer_log_prob(model, batch, answers, answer_mask, edits):
    logits = model.apply(batch, edits=edits).logits[:, batch.tokens.shape[1] - answers.shape[1] - 1:-1]
    log_p = jnp.take_along_axis(jax.nn.log_softmax(logits), answers[..., None], axis=-1)[..., 0]
    return jnp.sum(log_p * answer_mask, axis=1)


def answer_log_prob(model, prompt: Batch, answers: Array, *, answer_mask: Array | None = None,
                    edits: Edit | Sequence[Edit] | None = ()) -> Array:
    """log p(y* | prompt, edits) [B], teacher forcing the answer tokens `answers` [B, A] after the
    (left-padded) prompt: the target of the causal probes' Delta log p (ILI Eq. 9)."""
    answers = jnp.asarray(answers, jnp.int32)
    mask = jnp.ones(answers.shape, bool) if answer_mask is None else jnp.asarray(answer_mask, bool)
    full = jnp.concatenate([prompt.mask, mask], axis=1)
    batch = model.batch(make_batch(jnp.concatenate([prompt.tokens, answers], axis=1), full,
                                   positions=jnp.maximum(jnp.cumsum(full, axis=1) - 1, 0)))
    return _answer_log_prob(model, batch, answers, mask, model.check_edits(edits))


def answer_gradient(model, prompt: Batch, slots: Array, thoughts: Array, answers: Array) -> Array:
    """g = dL/dz [B, K, D] of L = teacher-forced answer cross-entropy, taken at the `embed` site
    (the oracle signal of ILI's gradient step, Eq. 14: it reads the gold answer)."""
    answers = jnp.asarray(answers, jnp.int32)
    tokens = jnp.concatenate([prompt.tokens, answers], axis=1)
    mask = jnp.concatenate([prompt.mask, jnp.ones(answers.shape, bool)], axis=1)
    batch = make_batch(tokens, mask)
    width = prompt.tokens.shape[1]

    def loss(run):
        log_p = jax.nn.log_softmax(run.logits[:, width - 1:-1])
        return -jnp.sum(jnp.take_along_axis(log_p, answers[..., None], axis=-1))

    _, grads = model.grad(loss, batch, wrt=["embed"], edits=write_thoughts(thoughts, slots))
    index_of = jnp.argmax(batch.positions[:, :, None] == jnp.asarray(slots)[:, None, :], axis=1)
    return jnp.take_along_axis(grads["embed"], index_of[..., None], axis=1)
