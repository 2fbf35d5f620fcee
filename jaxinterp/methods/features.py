"""Pooled text features from any library model: one vector per text, site and pooling.

Used for probing, transferability estimation and sentence embeddings. A site's [B, T, D]
activations are pooled over each row's real tokens:

  first  the first token (the [CLS]-style choice; in a causal LM it has seen only itself)
  mean   the mean over real tokens
  last   the last real token (what a causal LM's next-token prediction reads)

Texts are sorted by length and run in fixed-size batches padded to a multiple of
`bucket` tokens, so a corpus compiles a handful of programs rather than one per batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxinterp.errors import ArgumentError
from jaxinterp.models import make_batch

Array = jax.Array
POOLINGS = ("first", "mean", "last")


def pool(x: Array, mask: Array, pooling: str) -> Array:
    """[B, T, D] activations -> [B, D] float32, pooled over the True positions of mask [B, T]."""
    chex.assert_rank(x, 3)
    chex.assert_equal_shape_prefix([x, mask], 2)
    x = x.astype(jnp.float32)
    if pooling == "first":
        return x[jnp.arange(x.shape[0]), jnp.argmax(mask, 1)]
    if pooling == "last":
        return x[jnp.arange(x.shape[0]), x.shape[1] - 1 - jnp.argmax(mask[:, ::-1], 1)]
    if pooling == "mean":
        weights = mask.astype(jnp.float32)[..., None]
        return jnp.sum(x * weights, 1) / jnp.maximum(weights.sum(1), 1.0)
    raise ArgumentError(f"pooling: expected one of {POOLINGS}, found {pooling!r}")


@functools.partial(jax.jit, static_argnames=("sites", "poolings"))
def _pooled(model, batch, *, sites, poolings):
    captured = model.apply(batch, capture=sites).captured
    return {(site, p): pool(captured[site], batch.mask, p) for site in sites for p in poolings}


def pooled_features(
    model,
    texts: Sequence[str],
    *,
    sites: Sequence[str],
    poolings: Sequence[str] = POOLINGS,
    batch_size: int = 16,
    max_tokens: int = 128,
    bucket: int = 16,
    progress: bool = True,
) -> dict[tuple[str, str], np.ndarray]:
    """Pooled activations of `model` on `texts`: {(site, pooling): [N, D] float32}.

    Args:
      model: a `jaxinterp.Model` with a tokenizer.
      texts: the N texts (each truncated to its first `max_tokens` tokens).
      sites: site patterns (globs such as `blocks.*.resid_post`), resolved on the model.
      poolings: any of `POOLINGS`.
      batch_size, bucket: rows per forward and the padding multiple of the length.
      progress: show a progress bar.
    """
    if len(texts) == 0:
        raise ArgumentError("texts: expected at least one text, found none")
    unknown = [p for p in poolings if p not in POOLINGS]
    if unknown or not poolings:
        raise ArgumentError(f"poolings: expected a non-empty subset of {POOLINGS}, found {list(poolings)}")
    names = model.resolve_capture(tuple(sites))
    ids = [model.tokenizer(t, add_special_tokens=True)["input_ids"][:max_tokens] or [model.pad_token_id] for t in texts]
    order = np.argsort([len(i) for i in ids], kind="stable")
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc="features", disable=not progress):
        rows = order[start:start + batch_size]
        width = -(-max(len(ids[i]) for i in rows) // bucket) * bucket
        tokens = np.full((batch_size, width), model.pad_token_id, np.int32)
        mask = np.zeros((batch_size, width), bool)
        for r, i in enumerate(rows):
            tokens[r, :len(ids[i])], mask[r, :len(ids[i])] = ids[i], True
        mask[len(rows):, 0] = True  # filler rows hold one token so that every row is well defined
        pooled = _pooled(model, model.batch(make_batch(tokens, mask)), sites=names, poolings=tuple(poolings))
        chunks.append((rows, jax.device_get(pooled)))
    features = {}
    for key in chunks[0][1]:
        features[key] = np.zeros((len(texts), chunks[0][1][key].shape[-1]), np.float32)
        for rows, pooled in chunks:
            features[key][rows] = pooled[key][:len(rows)]
    return features
