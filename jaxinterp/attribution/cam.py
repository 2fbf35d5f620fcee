"""Class activation maps from a site's features F and gradients G over a region of n positions.

Each function maps F, G [..., n, C] and a mask [..., n] (the positions pooled over: the
patches of one image, or the real tokens of a row) to a map [..., n] in float32; masked-out
positions map to 0.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxinterp.attribution.ops import max_normalise, minmax

Array = jax.Array


def _pooled(x: Array, mask: Array) -> Array:
    """Mean over the masked positions: [..., n, C] -> [..., C]."""
    w = mask[..., None].astype(jnp.float32)
    return jnp.sum(x * w, axis=-2) / jnp.maximum(jnp.sum(w, axis=-2), 1.0)


def _checked(features: Array, grads: Array, mask: Array) -> tuple[Array, Array, Array]:
    chex.assert_equal_shape([features, grads])
    chex.assert_equal_shape_prefix([features, mask], mask.ndim)
    return features.astype(jnp.float32), grads.astype(jnp.float32), mask


def grad_cam(features: Array, grads: Array, mask: Array) -> Array:
    """Grad-CAM (Selvaraju et al., ICCV 2017, eqs. 1-2): a_c = mean_i G[i, c]; map = ReLU(sum_c a_c F[i, c])."""
    f, g, mask = _checked(features, grads, mask)
    return jax.nn.relu(jnp.einsum("...nc,...c->...n", f, _pooled(g, mask))) * mask


def grad_cam_pp(features: Array, grads: Array, mask: Array) -> Array:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, eq. 19 for an exponentiated score): pixel weights
    alpha = G^2 / (2 G^2 + sum_i F[i, c] G^3) (0 where the denominator is 0),
    a_c = sum_i alpha[i, c] ReLU(G[i, c]); map = ReLU(sum_c a_c F[i, c])."""
    f, g, mask = _checked(features, grads, mask)
    inside = mask[..., None].astype(jnp.float32)
    total = jnp.sum(f * inside, axis=-2, keepdims=True)
    denominator = 2 * g ** 2 + total * g ** 3
    alpha = jnp.where(denominator != 0, g ** 2 / jnp.where(denominator != 0, denominator, 1.0), 0.0)
    weights = jnp.sum(alpha * jax.nn.relu(g) * inside, axis=-2)
    return jax.nn.relu(jnp.einsum("...nc,...c->...n", f, weights)) * mask


def llava_cam_intensity(features: Array, grads: Array, mask: Array) -> Array:
    """LLaVA-CAM before its max-normalisation (Zhang et al., NAACL 2025; spec A.5-6): a_c =
    mean_i ReLU(G[i, c]) (ReLU before pooling), map = ReLU(mean_c a_c F[i, c]). Its size is what
    the information-flow analysis compares across layers (spec B.3)."""
    f, g, mask = _checked(features, grads, mask)
    return jax.nn.relu(jnp.einsum("...nc,...c->...n", f, _pooled(jax.nn.relu(g), mask)) / f.shape[-1]) * mask


def llava_cam(features: Array, grads: Array, mask: Array) -> Array:
    """LLaVA-CAM: `llava_cam_intensity` divided by its max (the 0.5 threshold is `cam_method`'s option)."""
    return max_normalise(llava_cam_intensity(features, grads, mask), axes=(-1,))


def diffusion_base(features: Array, grads: Array, mask: Array) -> Array:
    """Diffusion-CAM's base map (spec steps 4 and 6): G <- ReLU(G) (the contrastive gradient clamp),
    a_c = mean_i G[i, c], M = mean_c ReLU(a_c F[i, c]) (ReLU per channel product), min-max normalised."""
    f, g, mask = _checked(features, grads, mask)
    a = _pooled(jax.nn.relu(g), mask)
    return minmax(jnp.mean(jax.nn.relu(f * a[..., None, :]), axis=-1) * mask, axes=(-1,))
