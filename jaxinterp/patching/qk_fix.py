"""AtP*'s QK fix: attribution patching of queries and keys with the attention pattern exact.

Plain attribution patching linearises the metric in a query or key, but the softmax after
q.k saturates, so a patch that moves a head's attention a long way gets a near-zero
gradient estimate (Kramár et al. 2024, "AtP*", the QK fix). Here the pattern under the
patch is computed exactly and only what follows it is linearised:

    estimate(node) = sum over the node's heads h, query rows s and keys t of
                     (A'[h, s, t] - A[h, s, t]) * dmetric/dA[h, s, t]

with A the target run's `attn.probs`, the gradient taken on the target run (one backward
for every layer), and A' the softmax of the target's scores with the node's part replaced:

- query node (layer, position s, head h): row s of head h becomes q_source[s, h] . k_target;
- key node (layer, position t, kv head g): column t of every head h of group g becomes
  q_target[:, h] . k_source[t, g].

The replaced scores are not rebuilt from q, k and a scale here: they are the scores the
model itself computes in the target run with the site of one layer written from the source
at every position (one forward per layer, in one sweep), so the family's scale, mask and
default edits hold, and masked or padded entries stay masked. The softmax with one entry of
a row replaced is evaluated in closed form for every key at once (`_one_entry_replaced`).
With every position patched (a layer x head cell) the replaced scores are used whole.

These formulas are our reading of the paper's QK fix for query and key nodes, as written above.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxinterp.edits import PatchLayer
from jaxinterp.models.masks import MASKED
from jaxinterp.patching.grid import Grid
from jaxinterp.patching.metrics import Metric
from jaxinterp.sweep import sweep

Array = jax.Array
SITES = ("attn.q", "attn.k")


def qk_fixed_change(model, grid: Grid, metric: Metric, source_run, target) -> tuple[float, Array]:
    """The metric of the target run and the estimated change of every node of `grid`, per batch row:
    [L, B, T, heads] per position (T indexing the target's tokens), else [L, B, heads]."""
    layers = range(grid.layers)
    scores = [f"blocks.{layer}.attn.scores" for layer in layers]
    probs = [f"blocks.{layer}.attn.probs" for layer in layers]
    target_run = model.run(target, capture=scores)
    value, grads = model.grad(metric, target, wrt=probs)
    x = jnp.stack([target_run[name] for name in scores])  # [L, B, H, T, S]
    g = jnp.stack([grads[name] for name in probs])
    y = replaced_scores(model, grid, source_run, target)
    per_position = "position" in grid.axes
    if grid.site == "attn.q":
        change = _row_replaced(x, y, g)  # [L, B, H, T]
        return float(value), jnp.swapaxes(change, 2, 3) if per_position else jnp.sum(change, axis=3)
    if per_position:
        change = jnp.sum(_one_entry_replaced(x, y, g), axis=3)  # [L, B, H, S]: query rows summed, per key
    else:
        change = jnp.sum(_row_replaced(x, y, g), axis=3)[..., None]  # [L, B, H, 1]: every key at once
    change = change.reshape(*x.shape[:2], grid.heads, -1, change.shape[-1]).sum(axis=3)  # heads h of kv head h // G
    return float(value), jnp.swapaxes(change, 2, 3) if per_position else change[..., 0]


def replaced_scores(model, grid: Grid, source_run, target) -> Array:
    """[L, B, H, T, S]: layer l's `attn.scores` in the target run with its `grid.site` written from the source."""
    names = [f"blocks.{layer}.attn.scores" for layer in range(grid.layers)]
    values = jnp.stack([source_run[name] for name in grid.site_names()])

    def scores(batch, layer):
        run = model.run(batch, capture=names, edits=PatchLayer(grid.site, values, layer=layer))
        return jnp.stack([run[name] for name in names])[layer]

    return sweep(scores, target, jnp.arange(grid.layers), progress=False)


def _row_replaced(x: Array, y: Array, g: Array) -> Array:
    """sum_t (softmax(y) - softmax(x)) * g over the last axis: a whole row of scores replaced."""
    return jnp.sum((jax.nn.softmax(y, axis=-1) - jax.nn.softmax(x, axis=-1)) * g, axis=-1)


def _one_entry_replaced(x: Array, y: Array, g: Array) -> Array:
    """For every key t: sum_t' (A'_t' - A_t') g_t', A = softmax(x) and A' the softmax of x with entry t set to y_t.

    A' is the leave-one-out row (every key but t, log-normaliser `rest`, mean of g `rest_g`)
    mixed with the new entry: A' . g = e^(rest - Z') rest_g + e^(y_t - Z') g_t, Z' = logaddexp(rest, y_t).
    The leave-one-out terms follow from the whole row (rest = lse + log(1 - A_t)) except at the
    row's largest entry, where 1 - A_t may cancel to nothing (a saturated row), so there they
    are summed directly. Scores are shifted by the row's maximum, so padded rows (all masked)
    stay finite and give 0.
    """
    top = jnp.max(x, axis=-1, keepdims=True)
    x, y = x - top, y - top
    a = jax.nn.softmax(x, axis=-1)
    mean = jnp.sum(a * g, axis=-1, keepdims=True)
    is_top = jnp.arange(x.shape[-1]) == jnp.argmax(x, axis=-1)[..., None]
    others = jnp.where(is_top, MASKED, x)
    others_lse = jax.nn.logsumexp(others, axis=-1, keepdims=True)
    others_g = jnp.sum(jnp.exp(others - others_lse) * g, axis=-1, keepdims=True)
    small = jnp.where(is_top, 0.0, a)  # at most 1/2 off the maximum: 1 - A_t is well conditioned
    rest = jnp.where(is_top, others_lse, jax.nn.logsumexp(x, axis=-1, keepdims=True) + jnp.log1p(-small))
    rest_g = jnp.where(is_top, others_g, (mean - small * g) / (1.0 - small))
    total = jnp.logaddexp(rest, y)
    return jnp.exp(rest - total) * rest_g + jnp.exp(y - total) * g - mean
