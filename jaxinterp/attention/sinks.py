"""Column sink scores and sink density over a token span (EVAS, spec evas.md steps 3-4).

Zhang et al., "Shallow Focus, Deep Fixes" (EMNLP 2025). For a head's attention A [T, S] and a
span of key columns y (the image tokens in the paper, any span here), with each query's own key
removed (M = 1 - I):

- paper form (default): v_y = sum over span query rows x != y of A[x, y] / (n - 1), the mean
  attention the span's own tokens pay to y (n = span length, so n - 1 = r - k);
- code form (released `modeling_llama_eah.py`): v_y = sum over all rows x != y of A[x, y] / d_y,
  d_y the number of rows x != y that may attend y (T - y - 1 in a causal prefill; the code
  hard-codes 611 - (y - 36) for its LLaVA prompt).

Column y is a sink when v_y > beta; the sink density of a head is the share of the span's
columns that are sinks, C / n.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxinterp.errors import ArgumentError

Array = jax.Array
FORMS = ("paper", "code")


def column_sink_scores(probs: Array, visible: Array, keys: Array, queries: Array, *, own: Array | None = None,
                       form: str = "paper") -> Array:
    """[B, H, S] sink score v_y of every key column (0 outside the span).

    Args:
      probs: [B, H, T, S] attention probabilities.
      visible: [B, T, S] or [B, H, T, S] bool, the cells that count.
      keys: [B, S] bool, the span's key columns.
      queries: [B, T] bool, the span's query rows (used by the paper form).
      own: [.., T, S] bool, each query's own key (default: query t is key t).
      form: `paper` or `code` (see the module docstring).
    """
    chex.assert_rank(probs, 4)
    chex.assert_rank([keys, queries], 2)
    if form not in FORMS:
        raise ArgumentError(f"form: expected one of {FORMS}, found {form!r}")
    length, width = probs.shape[-2:]
    visible = visible[:, None] if visible.ndim == 3 else visible
    if own is None:
        own = (jnp.arange(length)[:, None] == jnp.arange(width)[None, :])[None, None]
    counted = visible & ~own
    if form == "paper":
        counted = counted & queries[:, None, :, None]
        denominator = jnp.maximum(jnp.sum(keys, axis=-1) - 1, 1)[:, None, None]
    else:
        denominator = jnp.maximum(jnp.sum(jnp.broadcast_to(counted, probs.shape), axis=-2), 1)
    column = jnp.sum(jnp.where(counted, probs.astype(jnp.float32), 0.0), axis=-2)
    return jnp.where(keys[:, None, :], column / denominator, 0.0)


def sink_density(scores: Array, keys: Array, beta: Array | float) -> Array:
    """[B, H] share of the span's columns whose sink score exceeds `beta` (alpha = C / n)."""
    chex.assert_rank(scores, 3)
    sinks = jnp.sum((scores > beta) & keys[:, None, :], axis=-1)
    return sinks / jnp.maximum(jnp.sum(keys, axis=-1), 1)[:, None]
