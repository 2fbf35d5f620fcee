"""One forward, and one backward, of a model for attribution.

`forward_backward` returns the target's per-row scores, the activations at the attributed
sites and the gradient of the summed scores with respect to each site: `jax.grad` with
respect to zero deltas added at the sites (the core's site contract), so every site of a call
(every layer at once) comes out of the same backward. `forward_values` is the forward alone,
for perturbation methods. Both are pure functions of explicit arrays, so a batch of
perturbations is one `sweep` (vmap) over them; `compiled` jits them for single calls.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxinterp import models
from jaxinterp.model import Run
from jaxinterp.models import Batch

Array = jax.Array


def _run(config, params, batch: Batch, edits, deltas, capture) -> Run:
    output, captured = models.forward(config, params, batch, edits=edits, deltas=deltas, capture=capture)
    return Run(logits=output.logits, hidden=output.hidden, captured=captured, batch=batch)


def forward_backward(config, params, batch: Batch, edits: Sequence, target, deltas: Mapping[str, Array]):
    """(scores [B], activations {site: x}, gradients {site: d sum(scores) / d x}) at the sites of `deltas`."""
    causal = bool(getattr(config, "causal", True))

    def objective(deltas):
        run = _run(config, params, batch, edits, deltas, tuple(deltas))
        values = target.values(run, causal)
        return jnp.sum(values), (values, run.captured)

    (_, (values, activations)), grads = jax.value_and_grad(objective, has_aux=True)(deltas)
    return values, activations, grads


def forward_values(config, params, batch: Batch, edits: Sequence, target) -> Array:
    """The target's scores [B] of one forward."""
    return target.values(_run(config, params, batch, edits, None, ()), bool(getattr(config, "causal", True)))


def zero_deltas(model, batch: Batch, sites: Sequence[str]) -> dict[str, Array]:
    """Zero deltas shaped like each site for this batch (the points the gradient is taken at)."""
    shapes = model.site_shapes(batch)
    return {site: jnp.zeros(shapes[site].shape, shapes[site].dtype) for site in sites}


@functools.cache
def compiled(config):
    """Jitted `forward_backward` and `forward_values` of one model config."""
    return (jax.jit(functools.partial(forward_backward, config)),
            jax.jit(functools.partial(forward_values, config)))
