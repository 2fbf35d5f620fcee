"""SOM long-text planning on synthetic clusters with known answers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.errors import ArgumentError
from jaxinterp.methods import som

CLUSTERS, DIM = 4, 8


@pytest.fixture(scope="module")
def documents():
    """30 documents whose sentences visit clusters 0 -> 1 -> 2 -> 3 (well separated, noisy)."""
    rng = np.random.default_rng(0)
    centres = 6.0 * np.eye(CLUSTERS, DIM)
    docs = [centres + 0.3 * rng.normal(size=(CLUSTERS, DIM)) for _ in range(30)]
    return centres, [d.astype(np.float32) for d in docs]


@pytest.fixture(scope="module")
def fitted(documents):
    _, docs = documents
    sentences = np.concatenate(docs)
    config = som.SOMConfig(rows=3, cols=3, epochs=20)
    fitted = som.train_som(sentences, config, jax.random.key(0))
    paths = [np.asarray(som.assign(fitted, d)) for d in docs]
    return fitted, paths


def test_one_update_matches_the_kohonen_rule_by_hand():
    weights = jnp.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    grid = jnp.array([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    x = jnp.array([1.2, 1.0])  # best-matching unit: 1
    updated = som.som_update(weights, grid, x, eta=0.5, sigma=1.0)
    h = np.exp(-np.array([1.0, 0.0, 1.0]) / 2.0)
    expected = np.asarray(weights) + 0.5 * h[:, None] * (np.asarray(x) - np.asarray(weights))
    np.testing.assert_allclose(updated, expected, rtol=1e-6)


def test_units_separate_the_clusters(fitted, documents):
    _, paths = fitted
    units_of = [set(int(p[c]) for p in paths) for c in range(CLUSTERS)]
    for a in range(CLUSTERS):
        for b in range(a + 1, CLUSTERS):
            assert not units_of[a] & units_of[b], f"clusters {a} and {b} share units"


def test_graph_and_plan_recover_the_document_order(fitted, documents):
    fitted_som, paths = fitted
    centres, _ = documents
    counts = som.transition_graph(paths, 9)
    assert float(counts.sum()) == 30 * (CLUSTERS - 1)
    probabilities = som.transition_probabilities(counts)
    cluster_of_unit = {int(p[c]): c for p in paths for c in range(CLUSTERS)}
    planned = som.plan(fitted_som, probabilities, jnp.asarray(centres[:1]), CLUSTERS)
    assert [cluster_of_unit[int(u)] for u in planned] == [0, 1, 2, 3]


def test_best_path_is_the_maximum_probability_path():
    probabilities = jnp.array([[0.0, 0.6, 0.4], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    units, log_p = som.best_path(probabilities, 0, 3)
    np.testing.assert_array_equal(units, [0, 1, 2])
    np.testing.assert_allclose(log_p, np.log(0.6), rtol=1e-6)
    _, unreachable = som.best_path(jnp.zeros((2, 2)), 0, 2)
    assert unreachable == -jnp.inf


def test_cosine_prototypes_and_self_loops():
    counts = jnp.array([[5.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(som.transition_probabilities(counts, self_loops=True), [[5 / 6, 1 / 6], [0, 0]])
    np.testing.assert_allclose(som.transition_probabilities(counts), [[0, 1], [0, 0]])
    fitted = som.SOM(weights=jnp.array([[1.0, 0.0], [0.0, 1.0]]), grid=jnp.zeros((2, 2)), distance="cosine")
    sentences = jnp.array([[0.1, 5.0], [3.0, 0.2], [2.0, 2.1]])
    np.testing.assert_array_equal(som.prototypes(fitted, sentences), [1, 0])


def test_bad_inputs_are_named():
    with pytest.raises(ArgumentError, match="embeddings"):
        som.train_som(np.zeros((0, 3)), som.SOMConfig(), jax.random.key(0))
    with pytest.raises(ArgumentError, match="distance"):
        som.SOMConfig(distance="manhattan")
    with pytest.raises(ArgumentError, match="paths"):
        som.transition_graph([np.array([3])], 4)
    with pytest.raises(ArgumentError, match="length"):
        som.best_path(jnp.ones((2, 2)), 0, 0)
