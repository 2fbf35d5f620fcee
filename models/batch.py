"""Model inputs and the key/value cache, as pytrees of plain arrays.

A `Batch` is what every forward takes: token ids plus the data that describes them
(validity mask, absolute positions, segment ids). Positions and segments are data, not
Python state, so edits can read them under `jit` and in the cached decode loop.

A `KVCache` holds, per layer, the keys and values of every slot written so far, together
with the positions, segments and validity of those slots. All rows of a batch write at
the same slot index (`length`): prompts are left-padded to a common length.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxinterp.errors import ArgumentError
from jaxinterp.models.sites import segment_id

Array = jax.Array


@struct.dataclass
class Batch:
    """Token ids and their description.

    Attributes:
      tokens: [B, T] int32 token ids (pads may hold any id).
      mask: [B, T] bool, True for real tokens.
      positions: [B, T] int32 absolute positions (RoPE / learned positions read these).
      segments: [B, T] int32 segment ids (see `jaxinterp.models.sites.SEGMENTS`).
      steps: [B, T] int32 index of the reasoning step (or any other unit) each token belongs to;
        0 where nobody marked steps.
      embeds: optional [B, T, D] input embeddings that replace the token embeddings where
        `embeds_mask` is True (everywhere when it is None): latent reasoning feeds hidden
        states back, vision-language models splice projected image features in.
      embeds_mask: optional [B, T] bool, where `embeds` applies.
      pixels: optional float32 pixel values: [B, C, H, W] for a vision tower, [B, N, C, H, W]
        (N images per row) for a vision-language model, whose tokens then hold one image
        placeholder token per image patch.
    """

    tokens: Array
    mask: Array
    positions: Array
    segments: Array
    steps: Array
    embeds: Array | None = None
    embeds_mask: Array | None = None
    pixels: Array | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.tokens.shape

    def check(self) -> None:
        """Assert the shapes and dtypes every forward relies on."""
        chex.assert_rank(self.tokens, 2)
        chex.assert_equal_shape([self.tokens, self.mask, self.positions, self.segments, self.steps])
        chex.assert_type([self.tokens, self.positions, self.segments, self.steps], jnp.int32)
        chex.assert_type(self.mask, bool)
        if self.embeds is not None:
            chex.assert_rank(self.embeds, 3)
            chex.assert_equal_shape_prefix([self.tokens, self.embeds], 2)
        if self.embeds_mask is not None:
            chex.assert_equal_shape([self.tokens, self.embeds_mask])

    def embed(self, table: Array) -> Array:
        """[B, T, D] input vectors: rows of the embedding `table`, with `embeds` spliced in."""
        tokens = table[self.tokens]
        if self.embeds is None:
            return tokens
        embeds = self.embeds.astype(table.dtype)
        return embeds if self.embeds_mask is None else jnp.where(self.embeds_mask[..., None], embeds, tokens)


def make_batch(tokens, mask=None, *, segments=None, positions=None, steps=None, embeds=None, embeds_mask=None,
               pixels=None) -> Batch:
    """A `Batch` from token ids, filling defaults.

    Positions default to the count of real tokens before each token (so a left-padded row
    starts at position 0 at its first real token, and a right-padded row counts 0, 1, ...);
    segments default to `prompt` for real tokens and `pad` elsewhere; steps to 0.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim == 1:
        tokens = tokens[None]
    mask = jnp.ones(tokens.shape, bool) if mask is None else jnp.asarray(mask).astype(bool).reshape(tokens.shape)
    if positions is None:
        positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    if segments is None:
        segments = jnp.where(mask, segment_id("prompt"), segment_id("pad"))
    batch = Batch(
        tokens=tokens, mask=mask, positions=jnp.asarray(positions, jnp.int32),
        segments=jnp.asarray(segments, jnp.int32),
        steps=jnp.zeros(tokens.shape, jnp.int32) if steps is None else jnp.asarray(steps, jnp.int32), embeds=embeds,
        embeds_mask=None if embeds_mask is None else jnp.asarray(embeds_mask, bool),
        pixels=None if pixels is None else jnp.asarray(pixels, jnp.float32),
    )
    batch.check()
    return batch


def check_tokens(batch: Batch, config: object) -> None:
    """Raises ArgumentError when a real token of `batch` (masked in, not replaced by `embeds` or an
    image) lies outside the vocabulary of `config`, or, for a family with a learned position table
    (`learned_positions`), when a real token's position lies past its end. Traced batches (inside
    `jit`) are not checked: their values are not known."""
    if any(isinstance(leaf, jax.core.Tracer) or not getattr(leaf, "is_fully_addressable", True)
           for leaf in jax.tree.leaves(batch)):
        return
    real = np.asarray(batch.mask) if batch.embeds_mask is None else np.asarray(batch.mask & ~batch.embeds_mask)
    if batch.embeds is not None and batch.embeds_mask is None or not real.any():
        return
    vocab = config.vocab_size
    tokens = np.asarray(batch.tokens)[real]
    placeholder = config.image_token_id  # image placeholders, which the model replaces
    tokens = tokens if placeholder is None else tokens[tokens != placeholder]
    if vocab is not None and tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        raise ArgumentError(f"inputs: token ids must lie in [0, {vocab}); found {tokens.min()}..{tokens.max()}")
    limit = config.max_position_embeddings if config.learned_positions else None
    positions = np.asarray(batch.positions)[real]
    if limit is not None and (positions.min() < 0 or positions.max() >= limit):
        raise ArgumentError(f"inputs: positions must lie in [0, {limit}) (the model's learned position table); "
                            f"found {positions.min()}..{positions.max()}: a prompt of {positions.max() + 1} tokens "
                            f"is longer than the model's {limit}")


@struct.dataclass
class Output:
    """What a family's module returns.

    Attributes:
      logits: [B, T, V] float32 (None for encoder-only models such as vision towers).
      hidden: [B, T, D] the last hidden states after the final normalisation.
      cache: the updated cache (None without one).
      finite: with `check_finite`, site name -> whether every value there was finite.
    """

    logits: Array | None
    hidden: Array
    cache: "KVCache | None" = None
    finite: dict[str, Array] | None = None


@struct.dataclass
class KVCache:
    """Keys and values of every layer for `size` slots, plus what describes each slot.

    Attributes:
      keys, values: per-layer tuples of [B, S, KV, Dh] arrays.
      mask: [B, S] bool, True where a slot holds a real token.
      positions: [B, S] int32 absolute positions of the slots.
      segments: [B, S] int32 segment ids of the slots.
      steps: [B, S] int32 step indices of the slots.
      length: int32 scalar, number of slots written (the next write starts here).
    """

    keys: tuple[Array, ...]
    values: tuple[Array, ...]
    mask: Array
    positions: Array
    segments: Array
    steps: Array
    length: Array

    @property
    def size(self) -> int:
        return self.mask.shape[1]

    @classmethod
    def empty(cls, *, layers: int, batch: int, size: int, kv_heads: int, head_dim: int, dtype) -> KVCache:
        """An empty cache of `size` slots."""
        zeros = lambda: jnp.zeros((batch, size, kv_heads, head_dim), dtype)  # noqa: E731
        return cls(
            keys=tuple(zeros() for _ in range(layers)),
            values=tuple(zeros() for _ in range(layers)),
            mask=jnp.zeros((batch, size), bool),
            positions=jnp.zeros((batch, size), jnp.int32),
            segments=jnp.zeros((batch, size), jnp.int32),
            steps=jnp.zeros((batch, size), jnp.int32),
            length=jnp.zeros((), jnp.int32),
        )

    def describe(self, batch: Batch) -> KVCache:
        """The cache with the slots of `batch` (about to be written at `length`) described."""
        write = lambda old, new: jax.lax.dynamic_update_slice_in_dim(old, new, self.length, axis=1)  # noqa: E731
        return self.replace(
            mask=write(self.mask, batch.mask),
            positions=write(self.positions, batch.positions),
            segments=write(self.segments, batch.segments),
            steps=write(self.steps, batch.steps),
        )

    def advance(self, steps: int) -> KVCache:
        """The cache after `steps` new slots were written."""
        return self.replace(length=self.length + steps)
