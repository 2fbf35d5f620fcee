"""One forward, and one backward, of a model for attribution.

`forward_backward` returns the target's per-row scores, the activations at the attributed
sites and the gradient of the summed scores with respect to each site: `jax.grad` with
respect to zero deltas added at the sites (the core's site contract), so every site of a call
(every layer at once) comes out of the same backward. `forward_values` is the forward alone,
for perturbation methods. Both run the model's own program (`Model.apply`, so its default
edits and wrappers hold) and are pure functions of the model pytree and arrays, so a batch of
perturbations is one `sweep` (vmap) over them; `forward_backward_jit` and
`forward_values_jit` are their compiled forms for single calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxinterp.models import Batch

Array = jax.Array


def forward_backward(model, batch: Batch, edits: Sequence, target, deltas: Mapping[str, Array]):
    """(scores [B], activations {site: x}, gradients {site: d sum(scores) / d x}) at the sites of `deltas`."""

    def objective(deltas):
        run = model.apply(batch, edits=edits, deltas=deltas, capture=tuple(deltas))
        values = target.values(run, model.next_token)
        return jnp.sum(values), (values, run.captured)

    (_, (values, activations)), grads = jax.value_and_grad(objective, has_aux=True)(deltas)
    return values, activations, grads


def forward_values(model, batch: Batch, edits: Sequence, target) -> Array:
    """The target's scores [B] of one forward."""
    return target.values(model.apply(batch, edits=edits), model.next_token)


forward_backward_jit = jax.jit(forward_backward)
forward_values_jit = jax.jit(forward_values)


def zero_deltas(model, batch: Batch, sites: Sequence[str]) -> dict[str, Array]:
    """Zero deltas shaped like each site for this batch (the points the gradient is taken at)."""
    shapes = model.site_shapes(batch)
    return {site: jnp.zeros(shapes[site].shape, shapes[site].dtype) for site in sites}
