"""StepFlow: Odds-Equal Bridge (shallow layers) + Step Momentum Injection (deep layers).

Xu et al., "Reasoning Fails Where Step Flow Breaks" (ACL 2026, arXiv:2604.06695), spec D-E.
Both are edits, so they compose with any other edit and run inside the jitted generator at
prefill and every decode step. What they need to know about tokens (prompt / thinking /
summary, and the step index of each token) is data: `TraceLabeler` labels every generated
token inside the decode loop, and the labels reach the edits through `Context.segments`,
`key_segments`, `steps` and `key_steps`.

- `bridge_projection` is the closed-form KL projection of Eqs. 5-8 on one attention row.
- `OddsEqualBridge` applies it on `attn.scores` of shallow layers.
- `StepMomentum` adds alpha * mean(previous step's values) to `attn.head_out` at the first
  token of each new step (the released code's last-W-tokens window, W = 4, or the paper
  notes' whole-step mean).
- `stepflow` builds both with the spec's defaults (tau_max 0.15, alpha 0.06, OEB on the
  bottom quarter). SMI's `variant`: `reference` (default), the released code's configuration
  for which alpha was tuned: one layer, the first of the top quarter (its pending window is
  consumed by the first deep layer that runs), a 4-token window; `all_deep_whole_step`,
  every top-quarter layer with the whole previous step's mean, a reading of the paper's
  wording the authors never ran.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxinterp.edits import Edit
from jaxinterp.errors import ArgumentError
from jaxinterp.generate import Labeler
from jaxinterp.methods.step_saliency import deep_layers, shallow_layers
from jaxinterp.models import Batch, Context, segment_id
from jaxinterp.models.masks import MASKED

Array = jax.Array
PROMPT, THINKING, SUMMARY = segment_id("prompt"), segment_id("thinking"), segment_id("summary")


# ---------------------------------------------------------------------------------------
# Token-label tracker


@struct.dataclass
class TraceLabeler(Labeler):
    """Labels generated tokens prompt -> thinking -> summary and counts thinking/summary steps.

    Runs inside the jitted decode loop (spec D.1, E.2). A token gets the current segment and
    step; then the state advances: when the last tokens equal `thinking_marker` the following
    tokens are `thinking` (an empty marker: thinking starts with the first generated token,
    as for models without a `<think>` tag); when they equal `summary_marker` the following
    tokens are `summary`, in a new step; and a token in `boundary` (e.g. one ending a
    sentence) closes the current step once it holds at least `min_step_tokens` tokens. This
    is the token-level analogue of the code's sentence splitter (which needs 15 characters);
    the prompt keeps step 0 and thinking starts at step 1.

    Attributes:
      boundary: [V] bool, tokens that may close a step (see `boundary_tokens`).
      summary_marker, thinking_marker: [W] token ids right-aligned, -1 padded (see `marker`).
      min_step_tokens: the fewest tokens a step holds before a boundary closes it.
    """

    boundary: Array
    summary_marker: Array
    thinking_marker: Array
    min_step_tokens: Array | int = 4

    def init(self, prompt: Batch):
        rows = prompt.tokens.shape[0]
        starts_thinking = jnp.all(self.thinking_marker < 0)
        segment = jnp.full((rows,), jnp.where(starts_thinking, THINKING, PROMPT), jnp.int32)
        recent = jnp.full((rows, self.summary_marker.shape[0]), -1, jnp.int32)
        return segment, jnp.where(starts_thinking, 1, 0) * jnp.ones((rows,), jnp.int32), jnp.zeros((rows,), jnp.int32), recent

    def label(self, state, tokens: Array):
        segment, step, length, recent = state
        recent = jnp.concatenate([recent[:, 1:], tokens[:, None]], axis=1)
        length = length + 1
        ends = lambda m: jnp.any(m >= 0) & jnp.all((m[None] < 0) | (recent[:, -m.shape[0]:] == m[None]), axis=1)  # noqa: E731
        to_thinking = (segment == PROMPT) & ends(self.thinking_marker)
        to_summary = (segment == THINKING) & ends(self.summary_marker)
        closes = (segment != PROMPT) & self.boundary[tokens] & (length >= self.min_step_tokens)
        new_step = to_thinking | to_summary | closes
        next_segment = jnp.where(to_thinking, THINKING, jnp.where(to_summary, SUMMARY, segment))
        state = (next_segment, step + new_step, jnp.where(new_step, 0, length), recent)
        return state, segment, step


def marker(tokenizer, text: str, width: int = 8) -> Array:
    """Token ids of `text` right-aligned in a [width] array padded with -1 ("" gives no marker)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    if len(ids) > width:
        raise ArgumentError(f"marker: expected at most {width} tokens, {text!r} has {len(ids)}")
    return jnp.asarray([-1] * (width - len(ids)) + list(ids), jnp.int32)


def boundary_tokens(tokenizer, vocab_size: int, endings: Sequence[str] = (".", "\n")) -> Array:
    """[V] bool: tokens whose text ends with one of `endings` (sentence ends and newlines)."""
    texts = tokenizer.batch_decode([[i] for i in range(min(vocab_size, len(tokenizer)))])
    table = np.zeros(vocab_size, bool)
    table[: len(texts)] = [t.endswith(tuple(endings)) for t in texts]
    return jnp.asarray(table)


# ---------------------------------------------------------------------------------------
# Odds-Equal Bridge


def bridge_projection(z: Array, current: Array, bridge: Array, visible: Array, *, tau_max: Array | float = 0.15,
                      eps: Array | float = 1e-6) -> Array:
    """Shift of the logits z [..., S] that moves the bridge mass to its target (Eqs. 5-8).

    With p = softmax(z) over `visible` keys and group masses p(S), p(B), p(O) (Eq. 5), the
    target is tau_B = min(sqrt(|B| / (|B| + |S|)), tau_max) clipped to [eps, 1 - p(O) - eps],
    tau_S = 1 - p(O) - tau_B (Eq. 6). When p(B) < tau_B (and p(S), 1 - p(O) > eps) the KL
    projection argmin KL(q || p) s.t. q(O) = p(O), q(B) = tau_B, q(S) = tau_S adds
    lambda_B = log tau_B - log p(B) to the bridge logits and lambda_S = log tau_S - log p(S)
    to the current-segment logits, leaving O untouched (Eqs. 7-8). Masses are computed in log
    space, so the projection is exact (the code's +eps in Eq. 8 is only a zero guard here,
    replaced by requiring a non-empty bridge).

    Returns the additive shift [..., S] (zero where not triggered).
    """
    chex.assert_equal_shape([z, current, bridge, visible])
    current, bridge = current & visible, bridge & visible
    log_all = jax.nn.logsumexp(jnp.where(visible, z, -jnp.inf), axis=-1, keepdims=True)
    log_mass = lambda group: jax.nn.logsumexp(jnp.where(group, z, -jnp.inf), axis=-1, keepdims=True) - log_all  # noqa: E731
    log_s, log_b = log_mass(current), log_mass(bridge)
    p_s, p_b = jnp.exp(log_s), jnp.exp(log_b)
    p_o = jnp.clip(1.0 - p_s - p_b, 0.0, 1.0)
    n_s, n_b = current.sum(-1, keepdims=True), bridge.sum(-1, keepdims=True)
    tau_b = jnp.minimum(jnp.sqrt(n_b / jnp.maximum(n_b + n_s, 1)), tau_max)
    tau_b = jnp.clip(tau_b, eps, 1.0 - p_o - eps)
    tau_s = 1.0 - p_o - tau_b
    trigger = (n_b > 0) & (p_b < tau_b) & (1.0 - p_o > eps) & (p_s > eps) & (tau_s > 0)
    lam_b = jnp.where(trigger, jnp.log(tau_b) - log_b, 0.0)
    lam_s = jnp.where(trigger, jnp.log(jnp.maximum(tau_s, 1e-30)) - log_s, 0.0)
    return jnp.where(bridge, lam_b, 0.0) + jnp.where(current, lam_s, 0.0)


@struct.dataclass
class OddsEqualBridge(Edit):
    """OEB on `attn.scores` of `layers` (spec D): thinking queries get bridge = prompt keys,
    summary queries get bridge = thinking keys; other queries are left alone.

    `strength` scales the log-odds shift (1 = the paper's projection, 0 = no edit).
    `decode_only` restricts it to single-token decode steps, as the code intends (D.1).
    """

    layers: tuple[int, ...] = struct.field(pytree_node=False)
    tau_max: Array | float = 0.15
    eps: Array | float = 1e-6
    strength: Array | float = 1.0
    decode_only: bool = struct.field(pytree_node=False, default=True)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(f"blocks.{layer}.attn.scores" for layer in self.layers)

    def __call__(self, x: Array, ctx: Context) -> Array:
        if self.decode_only and not ctx.decoding:
            return x
        query = ctx.segments[:, None, :, None]  # [B, 1, T, 1] against keys [B, 1, 1, S]
        keys = ctx.key_segments[:, None, None, :]
        prompt_like = (keys != THINKING) & (keys != SUMMARY) & (keys != segment_id("pad"))
        current = ((query == THINKING) & (keys == THINKING)) | ((query == SUMMARY) & (keys == SUMMARY))
        bridge = ((query == THINKING) & prompt_like) | ((query == SUMMARY) & (keys == THINKING))
        visible = (x > MASKED / 2) & ctx.key_mask[:, None, None, :]
        shape = x.shape
        shift = bridge_projection(x, jnp.broadcast_to(current, shape), jnp.broadcast_to(bridge, shape), visible,
                                  tau_max=self.tau_max, eps=self.eps)
        return x + jnp.asarray(self.strength, x.dtype) * shift


# ---------------------------------------------------------------------------------------
# Step Momentum Injection


@struct.dataclass
class StepMomentum(Edit):
    """SMI on `attn.head_out` of `layers` (spec E): at the first token of a new step, every head
    gets + alpha * mean of its values over the previous step.

    `window` an int W averages the previous step's last W tokens (the released code, W = 4,
    the default); None averages the whole previous step (the paper notes' m_prev). `phases`
    are the segments where steps count (the code: thinking only). `decode_only` as in
    `OddsEqualBridge`.
    """

    layers: tuple[int, ...] = struct.field(pytree_node=False)
    alpha: Array | float = 0.06
    window: int | None = struct.field(pytree_node=False, default=4)
    phases: tuple[str, ...] = struct.field(pytree_node=False, default=("thinking",))
    decode_only: bool = struct.field(pytree_node=False, default=True)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(f"blocks.{layer}.attn.head_out" for layer in self.layers)

    def __call__(self, x: Array, ctx: Context) -> Array:
        if self.decode_only and not ctx.decoding:
            return x
        in_phase = lambda seg: jnp.any(jnp.stack([seg == segment_id(p) for p in self.phases]), axis=0)  # noqa: E731
        step = ctx.steps[:, :, None]  # [B, T, 1] against keys [B, 1, S]
        earlier = ctx.key_mask[:, None, :] & (ctx.key_positions[:, None, :] < ctx.positions[:, :, None])
        key_steps = ctx.key_steps[:, None, :]
        first = in_phase(ctx.segments) & ~jnp.any(earlier & (key_steps == step), axis=-1)  # [B, T]
        previous = earlier & (key_steps == step - 1) & in_phase(ctx.key_segments)[:, None, :]
        if self.window is not None:
            last = jnp.max(jnp.where(previous, ctx.key_positions[:, None, :], -1), axis=-1, keepdims=True)
            previous = previous & (ctx.key_positions[:, None, :] > last - self.window)
        weights = previous / jnp.maximum(previous.sum(-1, keepdims=True), 1)
        mean = jnp.einsum("bts,bskd->btkd", weights.astype(jnp.float32), ctx.values.astype(jnp.float32))
        mean = jnp.repeat(mean, x.shape[2] // mean.shape[2], axis=2)  # head h reads kv head h // G
        return x + (self.alpha * first[..., None, None] * mean).astype(x.dtype)


SMI_VARIANTS = ("reference", "all_deep_whole_step")


def smi_configuration(num_layers: int, variant: str) -> tuple[tuple[int, ...], int | None]:
    """(SMI layers, window) of a named variant (see the module docstring)."""
    if variant == "reference":
        return deep_layers(num_layers)[:1], 4
    if variant == "all_deep_whole_step":
        return deep_layers(num_layers), None
    raise ArgumentError(f"variant: expected one of {SMI_VARIANTS}, found {variant!r}")


def stepflow(
    num_layers: int,
    *,
    tau_max: float = 0.15,
    alpha: float = 0.06,
    oeb_layers: Sequence[int] | None = None,
    variant: str = "reference",
    smi_layers: Sequence[int] | None = None,
    strength: float = 1.0,
) -> tuple[OddsEqualBridge, StepMomentum]:
    """StepFlow = OEB in the shallow layers + SMI in the deep layers (spec E.4).

    Defaults from the spec's Table 8: tau_max 0.15, alpha 0.06, OEB on the bottom quarter;
    SMI by `variant` (`reference`: the first top-quarter layer, a 4-token window, as the
    released code; `all_deep_whole_step`: every top-quarter layer, the whole previous step),
    `smi_layers` overriding the variant's layers. `strength` scales both (0 = plain generation).
    """
    layers, window = smi_configuration(num_layers, variant)
    oeb = OddsEqualBridge(layers=tuple(oeb_layers or shallow_layers(num_layers)), tau_max=tau_max,
                          strength=strength)
    smi = StepMomentum(layers=tuple(smi_layers or layers), alpha=alpha * strength, window=window)
    return oeb, smi
