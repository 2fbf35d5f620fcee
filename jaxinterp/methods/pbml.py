"""PBML: prompt-based meta-learning for few-shot text classification (Zhang et al., EMNLP 2022).

Two learners share the work. The meta-learner owns a soft template (prompt vectors P) and
the encoder; the base learner, per N-way K-shot episode, adapts only the label-word
embeddings W (one row per class) on the support set. As in the official code (`MGHZHANG/PBML`
@ 6be0eac, the spec's steps 5-7):

  alpha_{c,k} = softmax_k(<h_{c,k}, W0_c> / T)        instance weights, no gradient   (step 5)
  L_s(W) = sum_{c,k} alpha_{c,k} (-log softmax(H_s W^T)[(c,k), c]) / N
  W_{s+1} = W_s - eta_task stop_gradient(dL_s/dW)       S first-order inner steps      (step 5)
  L_q = NLL(softmax(h_q W_S^T), y_q)                    task loss on the queries       (step 6)

and the meta-learner minimises the mean L_q over a meta-batch of episodes with AdamW
(step 7); gradients reach P and the encoder through the query representations h_q (the
inner-loop direction is a constant, i.e. first-order). W0_c is the mean input embedding of
class c's candidate label words, l2-normalised and scaled (1 for 1-shot, 0.5 otherwise).

For the library's causal LMs the template follows the text: the text is left-padded, the
prompt vectors are appended, and h is the `final_norm` activation at the last prompt
position, the vector the LM multiplies by its (tied) embeddings to predict the next word;
so h . W0 starts as the LM's own score for the label words, as BERT's [MASK] head does in
the paper. Episodes are sampled in JAX from a padded class-to-example table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from jaxinterp.errors import ArgumentError
from jaxinterp.models import forward, make_batch

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class PBMLConfig:
    """Episode shape and base-learner settings.

    Attributes:
      ways, shots, queries: N classes, K support and Q query examples per class (official Q = 1).
      inner_steps: S base-learner steps (official 20-50 by dataset).
      task_lr: eta_task of the base learner (official 1e-3 to 1e-2).
      temperature: T of the instance weights (official 3).
      dropout: dropout on h during meta-training (official 0.5).
      label_scale: scale of the normalised W0 (None: 1.0 for 1-shot, 0.5 otherwise, as the code).
    """

    ways: int = 5
    shots: int = 1
    queries: int = 1
    inner_steps: int = 20
    task_lr: float = 5e-3
    temperature: float = 3.0
    dropout: float = 0.5
    label_scale: float | None = None

    def __post_init__(self):
        if self.ways < 2:
            raise ArgumentError(f"ways: expected at least 2 classes per episode (a label count of 1 is trivial), found {self.ways}")
        if self.shots < 1 or self.queries < 1 or self.inner_steps < 0:
            raise ArgumentError(f"shots, queries, inner_steps: expected >= 1, >= 1, >= 0, found {self.shots}, {self.queries}, {self.inner_steps}")

    @property
    def scale(self) -> float:
        return self.label_scale if self.label_scale is not None else (1.0 if self.shots == 1 else 0.5)


# ---------------------------------------------------------------------------------------
# Base learner (inner loop) and the task loss


def initial_label_words(word_vectors: Array, config: PBMLConfig) -> Array:
    """W0 [N, H]: class label-word vectors, l2-normalised and scaled (step 4)."""
    return config.scale * word_vectors / jnp.linalg.norm(word_vectors, axis=-1, keepdims=True)


def instance_weights(support: Array, w0: Array, temperature: float) -> Array:
    """alpha [N, K] = softmax_k(<h_{c,k}, W0_c> / T), without gradient (step 5)."""
    return jax.lax.stop_gradient(jax.nn.softmax(jnp.einsum("nkh,nh->nk", support, w0) / temperature, axis=-1))


def adapt_label_words(w0: Array, support: Array, config: PBMLConfig) -> Array:
    """W_S after S first-order steps of the weighted support loss (step 5); support [N, K, H]."""
    chex.assert_rank([w0, support], [2, 3])
    ways = support.shape[0]
    alpha = instance_weights(support, w0, config.temperature)
    flat = support.reshape(-1, support.shape[-1])
    targets = jnp.repeat(jnp.arange(ways), support.shape[1])

    def support_loss(w):
        nll = -jnp.take_along_axis(jax.nn.log_softmax(flat @ w.T, -1), targets[:, None], 1)[:, 0]
        return jnp.sum(alpha.reshape(-1) * nll) / ways

    def step(_, w):
        return w - config.task_lr * jax.lax.stop_gradient(jax.grad(support_loss)(w))

    return jax.lax.fori_loop(0, config.inner_steps, step, w0)


def episode_loss(w0: Array, support: Array, query: Array, config: PBMLConfig) -> tuple[Array, Array]:
    """(query NLL, query accuracy) of one episode (step 6); query [N, Q, H], class of row n is n."""
    w = adapt_label_words(w0, support, config)
    logits = jnp.einsum("nqh,ch->nqc", query, w)
    targets = jnp.broadcast_to(jnp.arange(query.shape[0])[:, None], query.shape[:2])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    return nll, jnp.mean(jnp.argmax(logits, -1) == targets)


# ---------------------------------------------------------------------------------------
# Episodes


@chex.dataclass(frozen=True)
class Episode:
    """Indices of one episode: its classes [N] and the examples of support [N, K] and query [N, Q]."""

    classes: Array
    support: Array
    query: Array


def class_table(labels: Array, num_classes: int) -> tuple[Array, Array]:
    """([C, M] example indices per class, padded with -1; [C] counts) for `sample_episode`."""
    labels = jnp.asarray(labels)
    counts = jnp.bincount(labels, length=num_classes)
    width = int(counts.max())
    order = jnp.argsort(labels, stable=True)
    starts = jnp.cumsum(counts) - counts
    slots = jnp.arange(width)
    table = jnp.where(slots[None] < counts[:, None], order[jnp.minimum(starts[:, None] + slots[None], labels.shape[0] - 1)], -1)
    return table, counts


def sample_episode(key: Array, table: Array, counts: Array, config: PBMLConfig) -> Episode:
    """An N-way K-shot episode with Q queries per class, all examples distinct (step 1).

    Only classes with at least K + Q examples are drawn.
    """
    needed = config.shots + config.queries
    eligible = counts >= needed
    class_key, example_key = jax.random.split(key)
    scores = jnp.where(eligible, jax.random.uniform(class_key, counts.shape), -1.0)
    classes = jax.lax.top_k(scores, config.ways)[1]
    noise = jax.random.uniform(example_key, (config.ways, table.shape[1]))
    picks = jnp.argsort(jnp.where(table[classes] >= 0, noise, 2.0), axis=1)[:, :needed]
    chosen = jnp.take_along_axis(table[classes], picks, 1)
    return Episode(classes=classes, support=chosen[:, :config.shots], query=chosen[:, config.shots:])


def check_classes(counts: Array, config: PBMLConfig) -> None:
    """Raises when fewer than N classes have K + Q examples."""
    eligible = int(jnp.sum(counts >= config.shots + config.queries))
    if eligible < config.ways:
        raise ArgumentError(
            f"labels: a {config.ways}-way {config.shots}-shot episode with {config.queries} queries needs "
            f"{config.ways} classes of >= {config.shots + config.queries} examples; found {eligible}"
        )


# ---------------------------------------------------------------------------------------
# Soft-template encoder (meta-learner side)


def encode(model_config: Any, params: Mapping[str, Any], embedding: Array, prompt: Array, tokens: Array,
           mask: Array) -> Array:
    """h [B, D]: `final_norm` at the last of the prompt vectors [L, D] appended to left-padded
    texts (tokens, mask [B, T]); `embedding` [V, D] is the frozen input embedding."""
    chex.assert_rank([prompt, tokens, mask], [2, 2, 2])
    x = jnp.concatenate([embedding[tokens], jnp.broadcast_to(prompt, (tokens.shape[0], *prompt.shape))], 1)
    full_mask = jnp.concatenate([mask, jnp.ones((tokens.shape[0], prompt.shape[0]), bool)], 1)
    batch = make_batch(jnp.zeros(full_mask.shape, jnp.int32), full_mask, embeds=x.astype(embedding.dtype))
    _, captured = forward(model_config, {**params, "embed": embedding}, batch, capture=("final_norm",))
    return captured["final_norm"][:, -1].astype(jnp.float32)


def episode_metrics(
    meta_params: Mapping[str, Any],
    model_config: Any,
    embedding: Array,
    tokens: Array,
    mask: Array,
    word_vectors: Array,
    episodes: Episode,
    config: PBMLConfig,
    dropout_key: Array | None = None,
) -> tuple[Array, Array]:
    """(query NLL [B], query accuracy [B]) of a meta-batch of B episodes; the meta-learner
    minimises the mean NLL (step 7).

    Args:
      meta_params: {"prompt": [L, D], "encoder": model params without "embed"}.
      model_config: the encoder family's config.
      embedding: [V, D] frozen token embedding.
      tokens, mask: [E, T] left-padded token ids of the whole dataset (or the examples used).
      word_vectors: [C, D] mean label-word embedding of every class.
      episodes: a batch of episodes (leading axis B), indices into tokens.
      dropout_key: enables dropout on h (training); None at evaluation.
    """
    index = jnp.concatenate([episodes.support, episodes.query], axis=2)  # [B, N, K + Q]
    flat = index.reshape(-1)
    h = encode(model_config, meta_params["encoder"], embedding, meta_params["prompt"], tokens[flat], mask[flat])
    if dropout_key is not None and config.dropout > 0:
        keep = jax.random.bernoulli(dropout_key, 1 - config.dropout, h.shape)
        h = jnp.where(keep, h / (1 - config.dropout), 0.0)
    h = h.reshape(*index.shape, -1)
    w0 = initial_label_words(word_vectors[episodes.classes], config)  # [B, N, D]
    return jax.vmap(lambda w, s, q: episode_loss(w, s, q, config))(w0, h[:, :, :config.shots], h[:, :, config.shots:])


def meta_optimizer(learning_rate: float, steps: int, warmup: int, weight_decay: float) -> optax.GradientTransformation:
    """AdamW with linear warm-up then linear decay, no decay on 1-D parameters (norm scales,
    biases), as the official `get_linear_schedule_with_warmup` setup (step 7)."""
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup), optax.linear_schedule(learning_rate, 0.0, max(steps - warmup, 1))],
        [warmup],
    )
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)  # noqa: E731
    return optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask)
