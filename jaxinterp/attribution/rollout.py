"""Attention rollout as an attribution map (Abnar & Zuidema, ACL 2020, eq. 1).

The rollout R = prod_l normalise(r I + (1 - r) mean_h A_l) comes from
`jaxinterp.attention.attention_rollout` (streamed layer by layer); the map of a target token is
R's row at the position whose logits score it (t - 1 under a next-token objective, t in a masked-diffusion
one), averaged over the target's tokens, and read at the image tokens for an image map.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxinterp.attention import attention_rollout
from jaxinterp.attribution.passes import forward_values_jit
from jaxinterp.attribution.regions import image_features
from jaxinterp.attribution.request import Attribution, Request
from jaxinterp.attribution.targets import Tokens
from jaxinterp.errors import ArgumentError

Array = jax.Array


def rollout(request: Request, *, residual: float = 0.5, layers: tuple[int, ...] | None = None) -> Attribution:
    """Attention rollout of the request's target tokens.

    Options:
      residual: weight r of the identity standing for the residual connection (the paper's 0.5).
      layers: the decoder layers rolled out (default all).
    """
    target = request.target
    if not isinstance(target, Tokens):
        raise ArgumentError(f"target: rollout explains tokens (a Tokens target), found {type(target).__name__}")
    batch = request.batch
    product = attention_rollout(request.model, batch, residual=residual, layers=layers, edits=request.edits)
    rows = jnp.maximum(target.positions - int(request.model.next_token), 0)
    used = (target.positions >= 0).astype(jnp.float32)
    relevance = jnp.einsum("bk,bkt->bt", used, jnp.take_along_axis(product, rows[..., None], axis=1))
    relevance = relevance / used.sum(axis=1, keepdims=True)
    out = {"tokens": relevance[None]}
    if request.region == "image":
        out["image"] = image_features(request.config, batch, "rollout", relevance[..., None])[None, ..., 0]
    values = forward_values_jit(request.model, batch, request.edits, target)
    return Attribution(values=values, **out)
