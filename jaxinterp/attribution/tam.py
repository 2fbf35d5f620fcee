"""TAM, the Token Activation Map (Li et al., ICCV 2025, sec. 3): class activations read from the logits.

The activation of class c (a token id) at position i is ReLU(z_i[c]): the model's own logits,
read at every position, without a gradient. For an explained token t of id c:

1. the image map is ReLU(z_i[c]) at the image tokens, the text map the same at the text tokens
   before t;
2. estimated causal inference (ECI, sec. 3.2): each earlier text token j of another id c_j
   activates the image through its own class, ReLU(z_i[c_j]); weighted by how much j itself
   carries c (w_j = ReLU(z_j[c]), normalised) these form the interference map I, and the
   least-squares scale s* = <m, I> / <I, I> removes it: m <- ReLU(m - s* I);
3. image and text scores are min-max normalised together and each image's map is denoised by
   the rank Gaussian filter (sec. 3.3, kernel 3).

A target of several tokens averages their maps. One forward, no backward.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxinterp.attribution.ops import EPS, rank_gaussian_filter
from jaxinterp.attribution.regions import grid_shape, image_positions
from jaxinterp.attribution.request import Attribution, Request
from jaxinterp.attribution.targets import Tokens
from jaxinterp.errors import ArgumentError

Array = jax.Array


def eci(image: Array, own: Array, weights: Array) -> Array:
    """TAM's estimated causal inference: image map [n] minus its least-squares share of the interference
    map own @ (weights / sum weights), own [n, T] being each context token's own-class image map."""
    interference = own @ (weights / (jnp.sum(weights) + EPS))
    energy = jnp.sum(interference ** 2)
    scale = jnp.where(energy > 0, jnp.sum(image * interference) / jnp.where(energy > 0, energy, 1.0), 0.0)
    return jax.nn.relu(image - scale * interference)


def token_activation(logits: Array, tokens: Array, text: Array, images: Array, position: Array, class_id: Array,
                     use_eci: bool) -> tuple[Array, Array]:
    """One row's TAM of one token: (image scores [n], text scores [T]) jointly min-max normalised.

    logits [T, V]; tokens [T]; text [T] bool (real, non-image tokens); images [n] image token positions."""
    activation = jax.nn.relu(logits[:, class_id])
    context = text & (jnp.arange(tokens.shape[0]) < position)
    image = activation[images]
    if use_eci:
        own = jax.nn.relu(logits[images][:, tokens])
        image = eci(image, own, jnp.where(context & (tokens != class_id), activation, 0.0))
    text_scores = jnp.where(context, activation, jnp.inf)
    low = jnp.minimum(jnp.min(image, initial=jnp.inf), jnp.min(text_scores))
    high = jnp.maximum(jnp.max(image, initial=-jnp.inf), jnp.max(jnp.where(context, activation, -jnp.inf)))
    scale = lambda x: (x - low) / (high - low + EPS)  # noqa: E731
    return scale(image), jnp.where(context, scale(activation), 0.0)


@functools.partial(jax.jit, static_argnames=("use_eci",))
def _maps(logits, tokens, text, images, positions, ids, *, use_eci: bool) -> tuple[Array, Array]:
    """TAM of every target token of every row, averaged over each row's tokens: ([B, n], [B, T])."""
    per_token = jax.vmap(token_activation, in_axes=(None, None, None, None, 0, 0, None))
    image, text_map = jax.vmap(per_token, in_axes=(0, 0, 0, 0, 0, 0, None))(
        logits, tokens, text, images, positions, ids, use_eci)
    used = (positions >= 0).astype(jnp.float32)
    count = used.sum(axis=1)[:, None]
    return jnp.einsum("bk,bkn->bn", used, image) / count, jnp.einsum("bk,bkt->bt", used, text_map) / count


@functools.partial(jax.jit, static_argnames=("kernel",))
def _filtered(grids: Array, kernel: int) -> Array:
    """The rank Gaussian filter on every [rows, cols] map of [B, N, rows, cols]."""
    return jax.vmap(jax.vmap(lambda m: rank_gaussian_filter(m, kernel)))(grids)


def tam(request: Request, *, kernel: int = 3, use_eci: bool = True) -> Attribution:
    """Token activation maps of the request's target tokens.

    Options:
      kernel: side of the rank Gaussian filter on each image's map (the paper's 3).
      use_eci: apply estimated causal inference (the paper's default; False for its ablation).
    """
    target = request.target
    if not isinstance(target, Tokens):
        raise ArgumentError(f"target: TAM explains tokens (a Tokens target), found {type(target).__name__}")
    config, batch = request.config, request.batch
    run = request.model.run(batch, edits=request.edits)
    logits = run.logits.astype(jnp.float32)
    if request.region == "image":
        images = image_positions(config, batch)
        text = batch.mask & (batch.tokens != config.image_token_id)
    else:
        images = jnp.zeros((batch.tokens.shape[0], 0), jnp.int32)
        text = batch.mask
    image, text_map = _maps(logits, batch.tokens, text, images, target.positions, target.ids, use_eci=use_eci)
    out = {"tokens": text_map[None]}
    if request.region == "image":
        offset, rows, cols = config.image_grid
        grids = image.reshape(batch.tokens.shape[0], batch.pixels.shape[1], config.tokens_per_image)
        grids = grids[..., offset:offset + rows * cols].reshape(*grids.shape[:2], *grid_shape(config))
        out["image"] = _filtered(grids, kernel)[None]
    return Attribution(values=target.values(run, request.model.next_token), **out)
