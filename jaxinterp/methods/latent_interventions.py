"""Decode-time interventions on latent thoughts (ILI, Chang et al., ACL 2026, arXiv:2606.01243, §4).

Each intervention is a `SlotTransform` edit on the `embed` site: compose it after
`write_thoughts` and it edits the thoughts in place before the answer is decoded. Defaults
are the paper's Table 6 (spec "Defaults"); slot indices are 0-based (z2 = 1, (z5, z6) = (4, 5)).

- `mapper_transport`      A, Eq. 12: move the terminal pair's mean toward the mapper's image.
- `anchor_slerp`          B.1, Eq. 13: slerp the causal hub toward an exemplar's final thought.
- `gradient_step`         B.2, Eq. 14: one normalised answer-gradient step on the hub (ORACLE:
                          the gradient reads the gold answer).
- `tied_projection`       C.1, Eq. 15: mix each thought with the expected input embedding
                          under the logits of the position before it.
- `energy_descent`        C.2, Eq. 16: clipped descent steps on a learned energy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxinterp.methods.latent import SlotTransform, write_thoughts
from jaxinterp.models import Batch

Array = jax.Array


def slerp(u: Array, v: Array, alpha: Array | float, *, threshold: float = 0.9995) -> Array:
    """Spherical interpolation of unit vectors u -> v by `alpha` (renormalised; normalised lerp when
    u.v > `threshold`, as in the ILI code)."""
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    dot = jnp.clip(jnp.sum(u * v, axis=-1, keepdims=True), -1.0, 1.0)
    theta = jnp.arccos(dot)
    safe = jnp.where(dot > threshold, 1.0, jnp.sin(theta))
    arc = (jnp.sin((1 - alpha) * theta) * u + jnp.sin(alpha * theta) * v) / safe
    out = jnp.where(dot > threshold, (1 - alpha) * u + alpha * v, arc)
    return out / jnp.linalg.norm(out, axis=-1, keepdims=True)


def _norm(x: Array) -> Array:
    return jnp.linalg.norm(x, axis=-1, keepdims=True)


def _transport(z, args):
    mapper, params, pair, alpha, eta, lam, beta, basis = args
    i, j = pair.value
    m0 = (z[:, i] + z[:, j]) / 2
    t0 = mapper.value(params, m0)
    m1 = ((1 - eta) * _norm(m0) + eta * _norm(t0)) * slerp(m0, t0, alpha)
    if basis is not None:
        m1 = (1 - lam) * m1 + lam * (m1 @ basis) @ basis.T
    return z.at[:, i].set(m1 + beta * (z[:, i] - m0)).at[:, j].set(m1 + beta * (z[:, j] - m0))


def mapper_transport(slots: Array, mapper: Callable[[Any, Array], Array], params: Any, *, pair: tuple[int, int] = (4, 5),
                     alpha: float = 0.15, eta: float = 0.25, lam: float = 0.0, beta: float = 1.0,
                     basis: Array | None = None) -> SlotTransform:
    """A (Eq. 12): m0 = mean of the pair, t0 = mapper(m0), m1 = [(1-eta)|m0| + eta|t0|] slerp(m0, t0; alpha),
    optionally mixed with its projection on `basis` [D, r] (top-r embedding PCs) by `lam`, and the
    residuals z - m0 re-added with weight `beta`. `mapper(params, x)` is e.g. `latent_probes.apply_mapper`."""
    return SlotTransform(positions=slots, fn=_transport, args=(_Static(mapper), params, _Static(pair), alpha, eta, lam,
                                                                beta, basis))


def _hub_slerp(z, args):
    hub, anchor, alpha = args
    return z.at[:, hub.value].set(_norm(z[:, hub.value]) * slerp(z[:, hub.value], anchor, alpha))


def anchor_slerp(slots: Array, anchor: Array, *, hub: int = 1, alpha: float = 0.10) -> SlotTransform:
    """B.1 (Eq. 13): z_hub' = |z_hub| slerp(z_hub, t; alpha), t = `anchor` [B, D] (a retrieved exemplar's
    final thought; see `latent_probes.retrieve_anchors`, which searches a separate exemplar bank)."""
    return SlotTransform(positions=slots, fn=_hub_slerp, args=(_Static(hub), anchor, alpha))


def _hub_step(z, args):
    hub, g, eta, eps = args
    zh = z[:, hub.value]
    return z.at[:, hub.value].set(zh - eta * _norm(zh) * g / (_norm(g) + eps))


def gradient_step(slots: Array, gradient: Array, *, hub: int = 1, eta: float = 0.20, eps: float = 1e-6) -> SlotTransform:
    """B.2 (Eq. 14), ORACLE: z_hub' = z_hub - eta |z_hub| g / (|g| + eps), g = `gradient` [B, D] of the
    gold-answer loss w.r.t. the hub (from `latent.answer_gradient`)."""
    return SlotTransform(positions=slots, fn=_hub_step, args=(_Static(hub), gradient, eta, eps))


def _mix(z, args):
    expected, alpha = args
    return (1 - alpha) * z + alpha * expected


def tied_projection(slots: Array, expected: Array, *, alpha: float = 0.20) -> SlotTransform:
    """C.1 (Eq. 15): h' = (1 - alpha) h + alpha e~, e~ = E^T softmax(o / tau) [B, K, D] from
    `expected_embeddings`."""
    return SlotTransform(positions=slots, fn=_mix, args=(expected, alpha))


def expected_embeddings(model, prompt: Batch, slots: Array, thoughts: Array, *, tau: float = 1.0) -> Array:
    """e~_l = E^T softmax(o_{l-1} / tau) for every slot l [B, K, D]: the input embedding that the logits
    o at the position before the slot expect (one forward over the prompt with the thoughts written).
    E is the input embedding matrix (`params['embed']`, the library's name for it)."""
    logits = model(prompt, edits=write_thoughts(thoughts, slots))
    index_of = jnp.argmax(prompt.positions[:, :, None] == slots[:, None, :], axis=1)
    before = jnp.take_along_axis(logits, (index_of - 1)[..., None], axis=1)
    return jax.nn.softmax(before / tau, axis=-1) @ model.params["embed"].astype(jnp.float32)


def _descend(z, args):
    energy, params, eta, rho, steps = args
    grad = jax.grad(lambda h: jnp.sum(energy.value(params, h)))
    for _ in range(steps.value):
        step = eta * grad(z)
        radius = rho * _norm(z)
        z = z - step * jnp.minimum(1.0, radius / jnp.maximum(_norm(step), 1e-12))
    return z


def energy_descent(slots: Array, energy: Callable[[Any, Array], Array], params: Any, *, eta: float = 2e-3,
                   rho: float = 0.25, steps: int = 1) -> SlotTransform:
    """C.2 (Eq. 16): h' = h - Proj_{B(0, rho|h|)}(eta grad H(h)) on every slot, `steps` times;
    `energy(params, h)` is e.g. `latent_probes.energy`."""
    return SlotTransform(positions=slots, fn=_descend, args=(_Static(energy), params, eta, rho, _Static(steps)))


class _Static:
    """Wraps a structural argument (a function, an index) so that it is not a pytree leaf."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return hash(self.value)

    def __eq__(self, other):
        return isinstance(other, _Static) and other.value == self.value


jax.tree_util.register_pytree_node(_Static, lambda s: ((), s.value), lambda value, _: _Static(value))
