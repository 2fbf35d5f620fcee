"""PBML: the base learner's update by hand, first-order gradients, episode sampling, and a
meta-learning loop that learns on a tiny encoder."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxinterp.errors import ArgumentError
from jaxinterp.methods import pbml
from jaxinterp.models import init_params
from jaxinterp.models.llama import LlamaConfig


def test_one_inner_step_matches_the_hand_derived_update():
    rng = np.random.default_rng(0)
    support = rng.normal(size=(3, 2, 4))  # N = 3 classes, K = 2 shots, H = 4
    w0 = rng.normal(size=(3, 4))
    config = pbml.PBMLConfig(ways=3, shots=2, inner_steps=1, task_lr=0.1, temperature=3.0)
    alpha = np.exp(np.einsum("nkh,nh->nk", support, w0) / 3.0)
    alpha /= alpha.sum(1, keepdims=True)
    np.testing.assert_allclose(pbml.instance_weights(jnp.asarray(support), jnp.asarray(w0), 3.0), alpha, rtol=1e-5)
    h = support.reshape(6, 4)
    logits = h @ w0.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.eye(3)[np.repeat(np.arange(3), 2)]
    grad = (alpha.reshape(-1, 1) * (p - y)).T @ h / 3  # d/dW of sum alpha (-log p_target) / N
    adapted = pbml.adapt_label_words(jnp.asarray(w0), jnp.asarray(support), config)
    np.testing.assert_allclose(adapted, w0 - 0.1 * grad, rtol=1e-5, atol=1e-6)


def test_the_inner_loop_is_first_order():
    rng = np.random.default_rng(1)
    support, query = jnp.asarray(rng.normal(size=(3, 1, 4))), jnp.asarray(rng.normal(size=(3, 1, 4)))
    w0 = jnp.asarray(rng.normal(size=(3, 4)))
    config = pbml.PBMLConfig(ways=3, inner_steps=5, task_lr=0.3)
    d_support, d_query = jax.grad(lambda s, q: pbml.episode_loss(w0, s, q, config)[0], argnums=(0, 1))(support, query)
    assert float(jnp.abs(d_support).max()) == 0.0
    assert float(jnp.abs(d_query).max()) > 0.0


def test_episodes_hold_distinct_examples_of_distinct_eligible_classes():
    labels = np.array([0] * 5 + [1] * 1 + [2] * 4 + [3] * 6 + [4] * 3)  # class 1 is too small for 2-shot + 1 query
    table, counts = pbml.class_table(labels, 5)
    config = pbml.PBMLConfig(ways=3, shots=2, queries=1)
    pbml.check_classes(counts, config)
    for seed in range(20):
        episode = pbml.sample_episode(jax.random.key(seed), table, counts, config)
        classes = np.asarray(episode.classes)
        assert len(set(classes)) == 3 and 1 not in classes
        chosen = np.concatenate([np.asarray(episode.support), np.asarray(episode.query)], 1)
        assert len(set(chosen.ravel())) == chosen.size
        np.testing.assert_array_equal(labels[chosen], np.repeat(classes[:, None], 3, 1))
    with pytest.raises(ArgumentError, match="needs 5 classes of >= 3 examples; found 4"):
        pbml.check_classes(counts, dataclasses.replace(config, ways=5))
    with pytest.raises(ArgumentError, match="label count of 1"):
        pbml.PBMLConfig(ways=1)


def test_the_base_learner_fixes_bad_label_words():
    """Support examples around class directions; W0 points elsewhere: adaptation must recover."""
    rng = np.random.default_rng(2)
    directions = 3.0 * np.eye(5, 16)
    support = jnp.asarray(directions[:, None] + 0.3 * rng.normal(size=(5, 1, 16)))
    query = jnp.asarray(directions[:, None] + 0.3 * rng.normal(size=(5, 4, 16)))
    w0 = jnp.asarray(np.roll(directions, 1, axis=0) / 3.0)  # every class starts on its neighbour's direction
    config = pbml.PBMLConfig(ways=5, inner_steps=30, task_lr=1.0)
    _, before = pbml.episode_loss(w0, support, query, dataclasses.replace(config, inner_steps=0))
    _, after = pbml.episode_loss(w0, support, query, config)
    assert float(before) == 0.0 and float(after) == 1.0


@pytest.mark.slow  # about 15 s on 2 cores
def test_meta_training_lowers_the_query_loss_of_a_tiny_encoder():
    """Texts of class c repeat token c + 2; label words are uninformative, so the prompt and
    encoder must learn to make the last-position state carry the class."""
    rng = np.random.default_rng(3)
    classes, per_class, length = 6, 6, 5
    labels = np.repeat(np.arange(classes), per_class)
    tokens = np.where(rng.random((len(labels), length)) < 0.7, labels[:, None] + 2, rng.integers(10, 20, (len(labels), length)))
    config = LlamaConfig(vocab_size=24, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8)
    params = init_params(config, jax.random.key(0))
    embedding = params.pop("embed")
    meta = {"prompt": 0.02 * jax.random.normal(jax.random.key(1), (2, 16)), "encoder": params}
    vectors = jnp.asarray(rng.normal(size=(classes, 16)))
    episode_config = pbml.PBMLConfig(ways=3, shots=1, queries=2, inner_steps=5, task_lr=0.5, dropout=0.0)
    table, counts = pbml.class_table(labels, classes)
    tokens, mask = jnp.asarray(tokens, jnp.int32), jnp.ones((len(labels), length), bool)
    optimizer = pbml.meta_optimizer(3e-2, 60, 5, weight_decay=0.0)

    def loss(meta, key):
        episodes = jax.vmap(lambda k: pbml.sample_episode(k, table, counts, episode_config))(jax.random.split(key, 8))
        losses, _ = pbml.episode_metrics(meta, config, embedding, tokens, mask, vectors, episodes, episode_config)
        return losses.mean()

    @jax.jit
    def step(meta, state, key):
        value, grads = jax.value_and_grad(loss)(meta, key)
        updates, state = optimizer.update(grads, state, meta)
        return optax.apply_updates(meta, updates), state, value

    evaluation = jax.random.key(99)
    before = float(loss(meta, evaluation))
    state = optimizer.init(meta)
    for i in range(60):
        meta, state, _ = step(meta, state, jax.random.key(i))
    assert float(loss(meta, evaluation)) < 0.5 * before
