"""Lenses on the residual stream: the logit lens and direct logit attribution (DLA).

- `logit_lens`: the model's own final norm and unembedding applied to every block's
  `resid_post` (nostalgebraist 2020). The value is written into the last block's output by an
  edit that ignores what was there, so the compiled program keeps only the norm and the
  head (XLA drops the dead blocks), and one sweep covers every layer.
- `direct_logit_attribution`: the share of a logit difference written directly by the
  embedding, every attention head and every MLP, with the final norm's scale frozen at its
  value on the final residual (so the norm is linear and the shares add up). The per-head
  shares are read by one backward pass of d . attn.out through the output projections, with
  the residual stream cut after each attention (stop-gradient at `resid_mid`), so only the
  direct path is counted.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.edits import FunctionEdit
from jaxinterp.errors import ArgumentError
from jaxinterp.patching.metrics import last_logits
from jaxinterp.sweep import sweep

Array = jax.Array


def logit_lens(model, inputs) -> Array:
    """Float32 logits [L, B, T, V]: final norm and unembedding of `blocks.{l}.resid_post` for every layer l."""
    batch = model.batch(inputs)
    names = [f"blocks.{layer}.resid_post" for layer in range(len(model.resolve_capture("blocks.*.resid_post")))]
    run = model.run(batch, capture=names)
    stack = jnp.stack([run[name] for name in names])
    return sweep(lambda b, resid: model.run(b, edits=FunctionEdit((names[-1],), _replace, resid)).logits, batch, stack,
                 progress=False)


def _replace(x, ctx, value):
    return value.astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class LogitAttribution:
    """Direct contributions to logit[answer] - logit[wrong] at each row's last real token.

    Attributes:
      embed: [B] the input embedding (with position embeddings where the family adds them).
      heads: [B, L, H] each attention head through the output projection.
      attn_bias: [B, L] the output projection's bias (zero for families without one).
      mlps: [B, L] each MLP.
      constant: [B] the final norm's bias on the difference (zero for RMS norms).
      logit_diff: [B] the model's logit difference; embed + heads + attn_bias + mlps + constant
        adds up to it exactly, the scale being frozen at its value on the final residual.
    """

    embed: np.ndarray
    heads: np.ndarray
    attn_bias: np.ndarray
    mlps: np.ndarray
    constant: np.ndarray
    logit_diff: np.ndarray

    def total(self) -> np.ndarray:
        """[B] the sum of every term."""
        return self.embed + self.heads.sum((1, 2)) + self.attn_bias.sum(1) + self.mlps.sum(1) + self.constant


def _last(x: Array, batch) -> Array:
    """x [B, T, ...] at each row's last real token -> [B, ...]."""
    mask = batch.mask
    last = mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    return jax.vmap(lambda row, i: row[i])(x, last)


def _difference(logits: Array, answer: Array, wrong: Array) -> Array:
    """[B] logits [B, V] at each row's answer minus at its wrong token."""
    return (jnp.take_along_axis(logits, answer[:, None], 1) - jnp.take_along_axis(logits, wrong[:, None], 1))[:, 0]


def _frozen_norm(model) -> tuple[Array, Array | None, float]:
    """(scale, bias or None, eps) of the model's final norm: a bias means a LayerNorm, else an RMS norm."""
    norm = model.params.get("final_norm") if hasattr(model.params, "get") else None
    eps = getattr(model.config, "rms_norm_eps", getattr(model.config, "layer_norm_eps", None))
    if norm is None or "scale" not in norm or eps is None:
        raise ArgumentError(f"model: direct logit attribution needs a final norm (params 'final_norm' with a 'scale' "
                            f"and an eps in the config); found {model!r}")
    return jnp.asarray(norm["scale"], jnp.float32), norm.get("bias"), float(eps)


def _stop_gradient(x, ctx, args):
    return jax.lax.stop_gradient(x)


_DIRECT_ONLY = FunctionEdit(("blocks.*.resid_mid",), _stop_gradient)


def direct_logit_attribution(model, inputs, answer, wrong) -> LogitAttribution:
    """Direct logit attribution of logit[answer] - logit[wrong] (ids: one, or one per row) to every head and MLP."""
    scale, bias, eps = _frozen_norm(model)
    batch = model.batch(inputs)
    rows = batch.shape[0]
    answer = jnp.broadcast_to(jnp.asarray(answer, jnp.int32), (rows,))
    wrong = jnp.broadcast_to(jnp.asarray(wrong, jnp.int32), (rows,))
    layers = len(model.resolve_capture("blocks.*.resid_post"))
    heads_out = [f"blocks.{layer}.attn.head_out" for layer in range(layers)]
    attn_out = [f"blocks.{layer}.attn.out" for layer in range(layers)]
    mlp_out = [f"blocks.{layer}.mlp.out" for layer in range(layers)]
    final = f"blocks.{layers - 1}.resid_post"
    run = model.run(batch, capture=["embed", final, *heads_out, *attn_out, *mlp_out])

    _, unembed = model.grad(lambda r: jnp.sum(_difference(last_logits(r), answer, wrong)), batch, wrt=["final_norm"])
    unembed = _last(unembed["final_norm"].astype(jnp.float32), batch)  # [B, D]: W_U[answer] - W_U[wrong]
    x = _last(run[final].astype(jnp.float32), batch)
    direction = scale * unembed
    if bias is None:
        sigma = jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + eps)
        constant = jnp.zeros(rows)
    else:
        sigma = jnp.sqrt(jnp.var(x, -1, keepdims=True) + eps)
        direction = direction - jnp.mean(direction, -1, keepdims=True)  # the centring is symmetric
        constant = unembed @ jnp.asarray(bias, jnp.float32)
    direction = direction / sigma  # [B, D]: the frozen norm's transpose applied to the unembedding
    chex.assert_shape(direction, (rows, x.shape[-1]))

    def share(site: str) -> Array:
        return jnp.sum(_last(run[site].astype(jnp.float32), batch) * direction, -1)

    def direct(r):
        return sum(jnp.sum(_last(r[name].astype(jnp.float32), batch) * direction) for name in attn_out)

    _, through_output = model.grad(direct, batch, wrt=heads_out, edits=_DIRECT_ONLY, capture=attn_out)
    heads = jnp.stack([jnp.sum(_last(through_output[n] * run[n].astype(jnp.float32), batch), -1) for n in heads_out], 1)
    attn = jnp.stack([share(name) for name in attn_out], 1)
    return LogitAttribution(
        embed=np.asarray(share("embed")), heads=np.asarray(heads), attn_bias=np.asarray(attn - heads.sum(-1)),
        mlps=np.asarray(jnp.stack([share(name) for name in mlp_out], 1)), constant=np.asarray(constant),
        logit_diff=np.asarray(_difference(last_logits(run), answer, wrong)),
    )
