"""SOM long-text planning on synthetic clusters with known answers."""

from __future__ import annotations

import itertools

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


# Known answers for the planners: brute-force enumeration on small random graphs.

SEEDS = range(5)


def _random_graph(seed: int, units: int, self_loops: bool = True) -> np.ndarray:
    """Edge probabilities in (0, 1) with about 40% of the edges absent (not row-normalised)."""
    rng = np.random.default_rng(seed)
    probabilities = rng.uniform(0.05, 0.95, (units, units)) * (rng.random((units, units)) > 0.4)
    if not self_loops:
        np.fill_diagonal(probabilities, 0.0)
    return probabilities.astype(np.float32)


def _all_paths(probabilities: np.ndarray, start: int, length: int) -> list[tuple[tuple[int, ...], float]]:
    """Every existing path of `length` units from `start` with its float64 log-probability,
    best first, ties by the documented rule (last unit lower first, then the one before...)."""
    found = []
    for rest in itertools.product(range(probabilities.shape[0]), repeat=length - 1):
        path = (start, *rest)
        p = np.prod([float(probabilities[a, b]) for a, b in zip(path, path[1:])])
        if p > 0:
            found.append((path, float(np.log(p))))
    return sorted(found, key=lambda item: (-item[1], item[0][::-1]))


def _separated(scores: list[float], i: int, gap: float = 1e-4) -> bool:
    return all(abs(scores[i] - scores[j]) > gap for j in (i - 1, i + 1) if 0 <= j < len(scores))


@pytest.mark.parametrize("seed", SEEDS)
def test_k_best_paths_equal_the_enumeration_of_every_path(seed):
    probabilities = _random_graph(seed, 4)
    exact = 0
    for start, length, k in [(0, 1, 2), (1, 2, 3), (seed % 4, 3, 5), (2, 4, 12), (3, 3, 70)]:
        expected = _all_paths(probabilities, start, length)
        paths, log_p = (np.asarray(a) for a in som.k_best_paths(jnp.asarray(probabilities), start, length, k))
        assert paths.shape == (k, length) and log_p.shape == (k,)
        n = min(k, len(expected))
        brute = [score for _, score in expected]
        np.testing.assert_allclose(log_p[:n], brute[:n], atol=1e-4)
        assert np.all(log_p[n:] == -np.inf), "rows beyond the existing paths must be -inf"
        scores = dict(expected)
        for i in range(n):
            path = tuple(int(u) for u in paths[i])
            assert path in scores, f"row {i} {path} is not an existing path from {start}"
            np.testing.assert_allclose(log_p[i], scores[path], atol=1e-4)
            if _separated(brute, i):
                assert path == expected[i][0]
                exact += 1
        assert len({tuple(row) for row in paths[:n]}) == n, "paths repeat"
    assert exact >= 10


def test_k_best_paths_order_exact_ties_by_the_last_unit_then_backwards():
    # every row has two edges of probability 0.5, so all paths of a length tie exactly
    probabilities = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]], np.float32)
    expected = _all_paths(probabilities, 0, 4)
    assert len(expected) == 8
    paths, log_p = som.k_best_paths(jnp.asarray(probabilities), 0, 4, 10)
    assert [tuple(int(u) for u in row) for row in paths[:8]] == [path for path, _ in expected]
    np.testing.assert_allclose(log_p[:8], 3 * np.log(0.5), rtol=1e-6)
    assert np.all(np.asarray(log_p[8:]) == -np.inf)


@pytest.mark.parametrize("seed", SEEDS)
def test_best_path_is_the_first_of_the_k_best_and_the_brute_force_best(seed):
    probabilities = jnp.asarray(_random_graph(seed, 4))
    for start, length in [(0, 2), (1, 3), (2, 4)]:
        units, log_p = som.best_path(probabilities, start, length)
        paths, scores = som.k_best_paths(probabilities, start, length, 3)
        np.testing.assert_array_equal(units, paths[0])
        assert log_p == scores[0]
        expected = _all_paths(np.asarray(probabilities), start, length)
        if expected:
            np.testing.assert_allclose(log_p, expected[0][1], atol=1e-4)
            if _separated([s for _, s in expected], 0):
                assert tuple(int(u) for u in units) == expected[0][0]
        else:
            assert log_p == -np.inf
    # a start given as a jax array is the same start
    a, _ = som.k_best_paths(probabilities, jnp.asarray(2), 3, 4)
    b, _ = som.k_best_paths(probabilities, 2, 3, 4)
    np.testing.assert_array_equal(a, b)
    # a traced start is not range-checked: an id outside the graph starts no path (it does not wrap)
    traced = jax.jit(lambda start: som.k_best_paths(probabilities, start, 3, 4))
    np.testing.assert_array_equal(traced(2)[0], b)
    assert np.all(np.asarray(traced(-1)[1]) == -np.inf) and np.all(np.asarray(traced(4)[1]) == -np.inf)


def _best_reach(probabilities: np.ndarray, roots) -> np.ndarray:
    """Best-path probability from any root to every unit, by enumerating simple paths."""
    best = np.zeros(probabilities.shape[0])

    def walk(unit, p, seen):
        best[unit] = max(best[unit], p)
        for nxt in np.flatnonzero(probabilities[unit] > 0):
            if nxt not in seen:
                walk(int(nxt), p * float(probabilities[unit, nxt]), seen | {int(nxt)})

    for root in roots:
        walk(int(root), 1.0, {int(root)})
    return best


def _check_parents(alignment, probabilities, roots, cumulative=True):
    """Each parent is earlier in the plan with an edge to its unit (and, for scores that are
    best-path probabilities, the unit's score is its parent's times that edge)."""
    units = list(alignment.units)
    for i, (unit, parent) in enumerate(zip(units, alignment.parents)):
        if unit in roots:
            assert parent == -1
            continue
        assert parent in units[:i], f"unit {unit}'s parent {parent} is not earlier in {units}"
        assert probabilities[parent, unit] > 0
        if cumulative:
            np.testing.assert_allclose(alignment.log_probabilities[i],
                                       alignment.log_probabilities[units.index(parent)] + np.log(probabilities[parent, unit]),
                                       atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_subgraph_alignment_grows_the_most_probably_reached_units(seed):
    probabilities = _random_graph(seed, 6)
    rng = np.random.default_rng(100 + seed)
    matched = rng.choice(6, 3)  # may repeat a unit
    roots = list(dict.fromkeys(int(u) for u in matched))
    reach = _best_reach(probabilities.astype(np.float64), roots)
    added = sorted((u for u in range(6) if u not in roots and reach[u] > 0), key=lambda u: (-reach[u], u))
    for size in [len(roots), len(roots) + 1, len(roots) + 2, 6, 9]:
        alignment = som.subgraph_alignment(jnp.asarray(probabilities), jnp.asarray(matched), size)
        expected = (roots + added)[:size]
        assert list(alignment.units) == expected
        np.testing.assert_allclose(alignment.log_probabilities, np.log(reach[expected]), atol=1e-9)
        _check_parents(alignment, probabilities.astype(np.float64), roots)


def test_subgraph_alignment_ties_and_unreachable_units():
    probabilities = np.zeros((6, 6))
    probabilities[4, 2] = probabilities[4, 1] = 0.5  # a tie: the lower id first
    probabilities[1, 5] = 0.9
    probabilities[3, 0] = 1.0  # unit 3 is never reached
    alignment = som.subgraph_alignment(probabilities, [4], 6)
    assert list(alignment.units) == [4, 1, 2, 5]
    np.testing.assert_allclose(alignment.log_probabilities, np.log([1.0, 0.5, 0.5, 0.45]))
    np.testing.assert_array_equal(alignment.parents, [-1, 4, 4, 1])
    assert list(som.subgraph_alignment(probabilities, [5], 3).units) == [5]


@pytest.mark.parametrize("seed", SEEDS)
def test_hybrid_alignment_is_the_union_of_the_brute_force_top_k_paths(seed):
    probabilities = _random_graph(seed, 5, self_loops=False)
    matched = np.array([3, 0, 4, 0])  # the last matched unit, 0, starts the paths (not the first, nor the last new one)
    checked = 0
    for length, k in [(2, 2), (3, 3), (4, 5), (3, 200)]:
        expected = _all_paths(probabilities, 0, length)
        top = expected[:k]
        brute = [s for _, s in expected[: k + 1]]
        if any(abs(a - b) < 1e-4 for a, b in zip(brute, brute[1:])):
            continue  # a near-tie would make the float32 choice among equal paths arbitrary
        units, scores, parents = [], [], []
        for path, score in top:
            for position, unit in enumerate(path):
                if unit not in units:
                    units += [unit]
                    scores += [score]
                    parents += [path[position - 1] if position else -1]
        alignment = som.hybrid_alignment(jnp.asarray(probabilities), jnp.asarray(matched), length, k)
        assert list(alignment.units) == units
        np.testing.assert_allclose(alignment.log_probabilities, scores, atol=1e-4)
        assert list(alignment.parents) == parents
        _check_parents(alignment, probabilities.astype(np.float64), [0], cumulative=False)
        checked += 1
    assert checked >= 3
    no_edges = np.zeros((3, 3), np.float32)
    assert som.hybrid_alignment(no_edges, [1], 2, 3).units.size == 0
    assert list(som.hybrid_alignment(no_edges, [1], 1, 3).units) == [1]


def test_bad_planner_arguments_are_named():
    probabilities = jnp.full((3, 3), 0.5)
    cases = [
        ("size", lambda: som.subgraph_alignment(probabilities, [0, 1, 0], 1)),
        ("matched", lambda: som.subgraph_alignment(probabilities, [], 2)),
        ("matched", lambda: som.subgraph_alignment(probabilities, [3], 2)),
        ("matched", lambda: som.subgraph_alignment(probabilities, [-1], 2)),
        ("matched", lambda: som.subgraph_alignment(probabilities, [0.0], 2)),
        ("matched", lambda: som.hybrid_alignment(probabilities, np.zeros(0, int), 2, 1)),
        ("matched", lambda: som.hybrid_alignment(probabilities, [5], 2, 1)),
        ("k", lambda: som.hybrid_alignment(probabilities, [0], 2, 0)),
        ("k", lambda: som.k_best_paths(probabilities, 0, 2, 0)),
        ("length", lambda: som.k_best_paths(probabilities, 0, 0, 2)),
        ("length", lambda: som.hybrid_alignment(probabilities, [0], 0, 2)),
        ("length", lambda: som.plan(som.SOM(weights=jnp.eye(3), grid=jnp.zeros((3, 2))), probabilities, jnp.eye(3), 0)),
        ("start", lambda: som.best_path(probabilities, -1, 2)),
        ("start", lambda: som.k_best_paths(probabilities, jnp.asarray(3), 2, 2)),
        ("probabilities", lambda: som.k_best_paths(jnp.ones((2, 3)), 0, 2, 1)),
    ]
    for name, call in cases:
        with pytest.raises(ArgumentError, match=f"^{name}:"):
            call()
