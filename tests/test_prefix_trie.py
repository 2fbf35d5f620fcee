"""The prefix trie: rows sorted by shared prefixes, and cuts that minimise the slots computed, found exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jaxinterp.prefix_trie import LEVEL_SLOTS, padded_rows, padded_width, plan_levels, shared_slots


def _rows(tokens: np.ndarray) -> dict:
    return {"tokens": tokens, "mask": np.ones_like(tokens, bool), "positions": np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)}


def _cost(tokens: np.ndarray, plan: tuple[int, ...]) -> int:
    """Padded slots a plan computes, counted from the rows themselves: per level, its padded count of
    distinct prefixes (every row at the last level) times its padded width plus one, plus a level's cost."""
    total = 0
    for a, b in zip(plan, plan[1:]):
        nodes = len(tokens) if b == tokens.shape[1] else len({row[:b].tobytes() for row in tokens})
        total += padded_rows(nodes) * (padded_width(b - a) + 1) + LEVEL_SLOTS
    return total


def test_padded_rows_keep_four_significant_bits_and_widths_round_to_eight():
    assert [padded_rows(c) for c in (1, 7, 16, 17, 34, 100, 1000)] == [1, 7, 16, 18, 36, 104, 1024]
    assert all(c <= padded_rows(c) <= c * 9 / 8 for c in range(1, 3000))
    assert [padded_width(w) for w in (1, 8, 9, 284)] == [8, 8, 16, 288]


def test_shared_slots_sort_rows_and_count_common_prefixes():
    tokens = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [1, 2, 3, 4], [0, 5, 5, 5]])
    order, shared = shared_slots(_rows(tokens))
    assert order.tolist() == [3, 0, 2, 1] and shared.tolist() == [0, 4, 2]
    rows = _rows(tokens[:2].copy())
    rows["mask"][1, 0] = False  # the same tokens, one masked out: a different computation from slot 0
    assert shared_slots(rows)[1].tolist() == [0]


@pytest.mark.parametrize("seed", range(4))
def test_plan_is_the_cheapest_of_all_plans(seed):
    """Against brute force over every subset of the slots where rows diverge, at each level budget:
    coalition-like rows (a few segments, each kept or replaced)."""
    rng = np.random.default_rng(seed)
    n = 6
    starts = np.concatenate([[0], np.cumsum(rng.integers(1, 30, n)) + 2])
    end = int(starts[-1]) + int(rng.integers(1, 20))
    masks = np.unique(rng.random((int(rng.integers(4, 40)), n)) < 0.5, axis=0)
    feature_of = np.searchsorted(starts, np.arange(end), side="right") - 2  # -1 before the first feature
    kept = np.where(feature_of >= 0, masks[:, np.maximum(feature_of, 0)], True)
    tokens = np.where(kept, np.arange(end) + 1, 0)
    order, shared = shared_slots(_rows(tokens))
    root = int(shared.min())
    assert root >= starts[1]  # no row changes the tokens before the first feature
    candidates = sorted(set(shared.tolist()) - {root, end})
    for levels in (1, 2, 3, n):
        plan = plan_levels(shared, root, end, levels)
        assert plan[0] == root and plan[-1] == end and len(plan) - 1 <= levels and list(plan) == sorted(set(plan))
        best = min(_cost(tokens, (root, *inner, end)) for size in range(levels)
                   for inner in itertools.combinations(candidates, size))
        assert _cost(tokens, plan) == best
    assert plan_levels(shared, root, end, 1) == (root, end)
