"""Step-Saliency: attention-gradient saliency pooled into step-to-step maps, per layer.

Xu et al., "Reasoning Fails Where Step Flow Breaks" (ACL 2026, arXiv:2604.06695), spec B-C.
Token saliency of layer l is S^(l)_{h,t,k} = |A^(l)_{h,t,k} * dL/dA^(l)_{h,t,k}| (rule `ag`;
`ag_signed` drops the abs, `g` is |dL/dA|), with A the post-softmax attention (the
`attn.probs` site) and L the row's own mean next-token cross-entropy or one chosen logit. Heads are
averaged, I^(l)_{t<-k} = mean_h S^(l)_{h,t,k}, and pooled into steps,
M^(l)[i, j] = mean_{t in step i, k in step j} I^(l)_{t<-k} (spec C.2: the full block,
upper-triangle zeros included).

Memory: each layer's [B, H, T, S] saliency is reduced to its [B, n, n] step map inside that
layer's backward: an identity edit on `attn.probs` whose custom VJP passes the gradient
through unchanged and writes the pooled map into the cotangent of a [B, n, n] "probe"
argument, so d L / d probe is the step map, and no layer's saliency outlives its reduction.
A backward pass would still keep every layer's attention pattern (and scores) as residuals,
~300 MB per SmolLM2 layer at T = 2,048, so the blocks are backpropagated a range at a time
(gradient checkpointing through sites): one plain forward captures `resid_pre` at each
range's first block; then, from the last range to the first, a forward with that input
pinned differentiates the objective (last range) or <cotangent, next range's resid_pre>
w.r.t. the probes and a delta at its own `resid_pre`, which is the cotangent handed to the
range before. Token-level maps are the special case of one group per token.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxinterp.edits import Edit, Pin
from jaxinterp.errors import ArgumentError
from jaxinterp.models import Batch, Context

Array = jax.Array
RULES = ("ag", "ag_signed", "g")
OBJECTIVES = ("loss", "logit")


def token_saliency(probs: Array, grad: Array, rule: str = "ag") -> Array:
    """Saliency of attention probabilities A given dL/dA (spec B.3): |A*g|, A*g or |g| by `rule`."""
    if rule == "ag":
        return jnp.abs(probs * grad)
    if rule == "ag_signed":
        return probs * grad
    if rule == "g":
        return jnp.abs(grad)
    raise ArgumentError(f"rule: expected one of {RULES}, found {rule!r}")


def pool(saliency: Array, groups: Array) -> Array:
    """Head-mean then block-mean pooling (spec B.4, C.2): [B, H, T, S] x one-hot [B, T, n] -> [B, n, n].

    Tokens whose one-hot row is all zero (scaffolding, padding) take part in no block.
    """
    heads = saliency.mean(axis=1)
    sums = jnp.einsum("bts,btn,bsm->bnm", heads, groups, groups)
    sizes = groups.sum(axis=1)
    return sums / jnp.maximum(sizes[:, :, None] * sizes[:, None, :], 1.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _observe(probs: Array, probe: Array, groups: Array, rule: str) -> Array:
    """Identity on probs; its VJP deposits pool(token_saliency(probs, g)) into the probe's cotangent."""
    return probs


def _observe_fwd(probs, probe, groups, rule):
    return probs, (probs, groups)


def _observe_bwd(rule, residuals, g):
    probs, groups = residuals
    return g, pool(token_saliency(probs, g, rule), groups), jnp.zeros_like(groups)


_observe.defvjp(_observe_fwd, _observe_bwd)


@struct.dataclass
class SaliencyProbe(Edit):
    """Identity edit on `attn.probs` of `layers` whose gradient w.r.t. `probes[i]` is layer i's step map."""

    layers: tuple[int, ...] = struct.field(pytree_node=False)
    rule: str = struct.field(pytree_node=False)
    probes: tuple[Array, ...] = ()
    groups: Array = None

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(f"blocks.{layer}.attn.probs" for layer in self.layers)

    def __call__(self, x: Array, ctx: Context) -> Array:
        return _observe(x, self.probes[self.layers.index(ctx.layer)], self.groups, self.rule)


def row_objectives(logits: Array, batch: Batch, objective: str, target: Array | None) -> Array:
    """Each row's L (spec B.2), [B]: its own mean next-token cross-entropy over real tokens (`loss`),
    or its logit[target_pos, target_token] (`logit`; target [B, 2] int).

    Per row, not over the batch: a batch mean would scale row b's map by its share of the
    batch's real tokens, so a map would depend on which rows share its batch.
    """
    rows = jnp.arange(logits.shape[0])
    if objective == "loss":
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], batch.tokens[:, 1:])
        real = (batch.mask[:, :-1] & batch.mask[:, 1:]).astype(ce.dtype)
        return jnp.sum(ce * real, axis=1) / jnp.maximum(real.sum(axis=1), 1.0)
    return logits[rows, target[:, 0], target[:, 1]]


def objective_value(logits: Array, batch: Batch, objective: str, target: Array | None) -> Array:
    """The scalar differentiated: the sum of `row_objectives`, so each row's gradient is that of its own L."""
    return jnp.sum(row_objectives(logits, batch, objective, target))


@functools.partial(jax.jit, static_argnames=("span", "probed", "rule", "objective"))
def _segment(model, batch, groups, target, edits, start_value, upstream, *, span, probed, rule, objective):
    """Per-row objectives (last range only, else zeros), step maps of the `probed` layers of the block
    range span = (first, stop), and the cotangent at `blocks.{first}.resid_pre` for the segment before.

    The range's input is pinned to `start_value` (captured in a plain forward), and its scalar is
    the objective itself for the last range, else <upstream, resid_pre of block `stop`>, so the
    blocks outside the range are dead code and only this range's residuals are held."""
    first, stop = span
    entry = f"blocks.{first}.resid_pre"

    def value(probes, delta):
        pinned = (Pin(entry, start_value),) if first > 0 else ()
        probe = SaliencyProbe(layers=probed, rule=rule, probes=probes, groups=groups)
        exit_site = () if stop == model.config.num_layers else (f"blocks.{stop}.resid_pre",)
        output = model.apply(batch, edits=(*edits, *pinned, probe), deltas={entry: delta}, capture=exit_site)
        captured = output.captured
        if not exit_site:
            rows = row_objectives(output.logits, batch, objective, target)
            return jnp.sum(rows), rows
        return jnp.sum(captured[exit_site[0]].astype(jnp.float32) * upstream), jnp.zeros(groups.shape[0], jnp.float32)

    n = groups.shape[-1]
    zeros = tuple(jnp.zeros((groups.shape[0], n, n), jnp.float32) for _ in probed)
    (_, rows), (maps, cotangent) = jax.value_and_grad(value, argnums=(0, 1), has_aux=True)(
        zeros, jnp.zeros_like(start_value))
    return rows, maps, cotangent


@functools.partial(jax.jit, static_argnames=("sites",))
def _entries(model, batch, edits, *, sites):
    return model.apply(batch, edits=edits, capture=sites).captured


def step_maps(
    model,
    inputs,
    steps: Array | np.ndarray,
    *,
    num_steps: int | None = None,
    layers: Sequence[int] | None = None,
    rule: str = "ag",
    objective: str = "loss",
    target: Array | np.ndarray | None = None,
    edits: Edit | Sequence[Edit] | None = (),
    layers_per_pass: int = 6,
) -> tuple[Array, Array]:
    """Per-layer step-to-step saliency maps M^(l) (spec B-C), backpropagated a range of blocks at a time.

    Args:
      model: a `jaxinterp.Model`.
      inputs: the trace (text, token ids or a `Batch`), rows of B traces.
      steps: [T] or [B, T] int step index of each token, -1 for tokens in no step (see
        `reasoning_segments.tokenize_trace`). For token-level maps pass `arange(T)`.
      num_steps: number of steps n (default: max step + 1).
      layers: blocks to analyse (default: all).
      rule: `ag` (paper), `ag_signed` or `g`.
      objective: `loss` (each row's mean next-token CE, the pipeline's choice) or `logit` (needs
        `target`). Each row's map is the gradient of its own L, so it does not depend on the
        other rows of the batch.
      target: [B, 2] int (position, token id) of the logit objective.
      edits: further edits active during the forward (e.g. an intervention under study).
      layers_per_pass: blocks per backward range (see the module docstring); the peak memory
        holds this many blocks' [B, H, T, S] residuals. Our choice: 6 keeps a 2,048-token
        SmolLM2 trace well under 8 GB; a value >= the depth is one plain backward pass.

    Returns:
      (L [B] per row, maps [layers, B, n, n] float32).
    """
    batch = model.batch(inputs)
    steps = jnp.atleast_2d(jnp.asarray(steps, jnp.int32))
    chex.assert_shape(steps, batch.tokens.shape)
    if rule not in RULES:
        raise ArgumentError(f"rule: expected one of {RULES}, found {rule!r}")
    if objective not in OBJECTIVES:
        raise ArgumentError(f"objective: expected one of {OBJECTIVES}, found {objective!r}")
    if objective == "logit":
        if target is None:
            raise ArgumentError("target: the logit objective needs [B, 2] (position, token id) targets, found None")
        target = jnp.asarray(target, jnp.int32).reshape(batch.tokens.shape[0], 2)
    n = int(steps.max()) + 1 if num_steps is None else num_steps
    if n < 1:
        raise ArgumentError(f"steps: expected at least one token with a step index >= 0, found max {int(steps.max())}")
    layers = tuple(range(model.config.num_layers)) if layers is None else tuple(sorted(int(i) for i in layers))
    if layers_per_pass < 1:
        raise ArgumentError(f"layers_per_pass: expected a positive int, found {layers_per_pass!r}")
    groups = jax.nn.one_hot(jnp.where(batch.mask, steps, -1), n, dtype=jnp.float32)
    edits = model.check_edits(edits)
    starts = list(range(layers[0], model.config.num_layers, layers_per_pass))
    spans = [(a, min(a + layers_per_pass, model.config.num_layers)) for a in starts]
    entries = _entries(model, batch, edits, sites=tuple(f"blocks.{a}.resid_pre" for a in starts))
    maps, upstream, loss = {}, None, None
    for first, stop in reversed(spans):  # backward through the blocks, one range at a time
        probed = tuple(layer for layer in layers if first <= layer < stop)
        start_value = entries[f"blocks.{first}.resid_pre"]
        value, found, upstream = _segment(
            model, batch, groups, target, edits, start_value,
            jnp.zeros_like(start_value) if upstream is None else upstream,
            span=(first, stop), probed=probed, rule=rule, objective=objective)
        loss = value if loss is None else loss
        maps.update(zip(probed, found))
    return loss, jnp.stack([maps[layer] for layer in layers])


# ---------------------------------------------------------------------------------------
# Diagnostics on step maps (spec C.3-C.4). `kinds` names each step: question / thinking / summary.


def _index(kinds: Sequence[str], kind: str) -> np.ndarray:
    return np.flatnonzero(np.asarray(kinds) == kind)


def block_intensity(step_map: Array, kinds: Sequence[str], rows: str, cols: str) -> float:
    """mean(M[rows, cols]) over the steps of two kinds (spec C.3), 0 when either is empty."""
    r, c = _index(kinds, rows), _index(kinds, cols)
    if r.size == 0 or c.size == 0:
        return 0.0
    return float(np.asarray(step_map)[np.ix_(r, c)].mean())


def final_heat_anomaly(step_map: Array, kinds: Sequence[str], *, floor: float = 1e-10) -> float:
    """mean(M[S, S]) / mean(M[T, T]) (spec C.3; 0 when the denominator is below `floor`, as in the code)."""
    thinking = block_intensity(step_map, kinds, "thinking", "thinking")
    return 0.0 if thinking < floor else block_intensity(step_map, kinds, "summary", "summary") / thinking


def _row_shares(step_map: Array) -> np.ndarray:
    m = np.asarray(step_map, np.float64)
    return m / np.maximum(m.sum(axis=-1, keepdims=True), 1e-30)


def shallow_lock_in(step_maps: Array, kinds: Sequence[str], layers: Sequence[int], *, band: int = 1) -> float:
    """Shallow Lock-in score: share of each thinking/summary row's saliency on its own step and
    the `band` steps before it, averaged over rows and the given (shallow) `layers`.

    The paper defines Shallow Lock-in qualitatively (a narrow diagonal band, little mass on
    Q or early T; spec C.4); this scalar and `band` = 1 (the immediate neighbour) are ours.
    """
    rows = np.flatnonzero(np.asarray(kinds) != "question")
    if rows.size == 0:
        return 0.0
    shares = _row_shares(np.asarray(step_maps)[list(layers)])
    near = np.abs(np.arange(len(kinds))[None, :] - rows[:, None])
    local = (near <= band) & (np.arange(len(kinds))[None, :] <= rows[:, None])
    return float((shares[:, rows] * local).sum(-1).mean())


def deep_decay(step_maps: Array, kinds: Sequence[str], layers: Sequence[int], *, recent: int = 2) -> float:
    """Deep Decay score: share of the summary rows' saliency on the summary itself and the last
    `recent` thinking steps, averaged over summary rows and the given (deep) `layers`.

    The paper's Deep Decay is qualitative (thinking saliency fades; the summary attends to
    itself and the last few steps; spec C.4); this scalar and `recent` = 2 are ours.
    """
    summary, thinking = _index(kinds, "summary"), _index(kinds, "thinking")
    if summary.size == 0:
        return 0.0
    near = np.concatenate([summary, thinking[-recent:] if recent else thinking[:0]])
    shares = _row_shares(np.asarray(step_maps)[list(layers)])
    return float(shares[:, summary][..., near].sum(-1).mean())


def layer_profile(step_maps: Array, kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """Per layer: the S-S and T-T block intensities and the final-heat anomaly ([layers] each)."""
    maps = np.asarray(step_maps)
    return {
        "summary_block": np.array([block_intensity(m, kinds, "summary", "summary") for m in maps]),
        "thinking_block": np.array([block_intensity(m, kinds, "thinking", "thinking") for m in maps]),
        "final_heat_anomaly": np.array([final_heat_anomaly(m, kinds) for m in maps]),
    }


def shallow_layers(num_layers: int) -> tuple[int, ...]:
    """The bottom quarter of the blocks (the paper's shallow band, README Table 8)."""
    return tuple(range(max(1, num_layers // 4)))


def deep_layers(num_layers: int) -> tuple[int, ...]:
    """The top quarter of the blocks (the paper's deep band, README Table 8)."""
    return tuple(range(num_layers - max(1, num_layers // 4), num_layers))


__all__ = [
    "OBJECTIVES", "RULES", "SaliencyProbe", "block_intensity", "deep_decay", "deep_layers",
    "final_heat_anomaly", "layer_profile", "objective_value", "pool", "row_objectives", "shallow_layers", "shallow_lock_in",
    "step_maps", "token_saliency",
]
