"""The coalition trie's plan: cuts at feature starts that minimise the slots computed, found exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jaxinterp.prefix_trie import LEVEL_SLOTS, cut_slots, padded_rows, padded_width, plan_levels


def _cost(masks: np.ndarray, bounds: np.ndarray, plan: tuple[int, ...]) -> int:
    """Padded slots a plan computes: per level, its padded count of nodes (the unperturbed prompt's is read,
    not computed, but at the last level) times its padded width plus one, plus a level's fixed cost."""
    n, total = masks.shape[1], 0
    for a, b in zip(plan, plan[1:]):
        nodes = {row[:b].tobytes() for row in masks if b == n or not row[:b].all()}
        total += (padded_rows(len(nodes)) if nodes else 0) * (padded_width(bounds[b] - bounds[a]) + 1) + LEVEL_SLOTS
    return total


def test_padded_rows_keep_four_significant_bits_and_widths_round_to_eight():
    assert [padded_rows(c) for c in (1, 7, 16, 17, 34, 100, 1000)] == [1, 7, 16, 18, 36, 104, 1024]
    assert all(c <= padded_rows(c) <= c * 9 / 8 for c in range(1, 3000))
    assert [padded_width(w) for w in (1, 8, 9, 284)] == [8, 8, 16, 288]


def test_cut_slots_are_the_suffix_minimum_of_feature_starts_after_the_root():
    assert cut_slots([3, 9, 5, 12], root=3).tolist() == [3, 5, 5, 12]
    assert cut_slots([4, 6], root=0).tolist() == [0, 6]


@pytest.mark.parametrize("seed", range(4))
def test_plan_is_the_cheapest_of_all_plans(seed):
    """Against brute force over every subset of cut candidates, at each level budget."""
    rng = np.random.default_rng(seed)
    n = 6
    masks = np.unique(rng.random((int(rng.integers(4, 40)), n)) < 0.5, axis=0)
    firsts = np.cumsum(rng.integers(1, 30, n)) + 2
    cuts = cut_slots(firsts, int(firsts[0]))
    end = int(firsts[-1]) + int(rng.integers(1, 20))
    bounds = np.append(cuts, end)
    for levels in (1, 2, 3, n):
        plan = plan_levels(masks, cuts, end, levels)
        assert plan[0] == 0 and plan[-1] == n and len(plan) - 1 <= levels and list(plan) == sorted(set(plan))
        best = min(_cost(masks, bounds, (0, *inner, n)) for size in range(levels)
                   for inner in itertools.combinations(range(1, n), size))
        assert _cost(masks, bounds, plan) == best
    assert plan_levels(masks, cuts, end, 1) == (0, n)
