"""Bootstrap intervals: a constant has a zero-width interval, the interval holds the mean, pairing subtracts."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.intervals import bootstrap_correlation, bootstrap_mean, paired_difference


def test_bootstrap_interval_of_a_constant_is_the_constant_and_counts_items():
    assert bootstrap_mean([0.5] * 7) == {"mean": 0.5, "ci95": [0.5, 0.5], "n": 7}
    assert bootstrap_mean([]) == {"mean": None, "ci95": [None, None], "n": 0}


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_items():
    rng = np.random.default_rng(0)
    small, large = bootstrap_mean(rng.normal(1.0, 1.0, 20)), bootstrap_mean(rng.normal(1.0, 1.0, 2000))
    for found in (small, large):
        assert found["ci95"][0] < found["mean"] < found["ci95"][1]
    assert np.diff(large["ci95"])[0] < np.diff(small["ci95"])[0] / 5
    assert large["ci95"][0] < 1.0 < large["ci95"][1]


def test_paired_difference_is_the_interval_of_the_item_differences():
    base = np.array([0.0, 1.0, 0.0, 1.0])
    assert paired_difference(base, base + 0.25) == {"mean": 0.25, "ci95": [0.25, 0.25], "n": 4}
    with pytest.raises(ValueError, match="other"):
        paired_difference(base, base[:3])


def test_bootstrap_correlation_brackets_r_and_leaves_out_constant_resamples():
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = 0.6 * x + rng.normal(size=40)
    found = bootstrap_correlation(x, y)
    assert found["r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert found["ci95"][0] < found["r"] < found["ci95"][1] and found["n"] == 40 and found["defined"] == 2000
    two = bootstrap_correlation([0.0, 1.0], [0.1, 0.7])  # half the resamples repeat one pair
    assert two["r"] == pytest.approx(1.0) and 0 < two["defined"] < 2000 and two["ci95"] == pytest.approx([1.0, 1.0])
    assert bootstrap_correlation([1, 2, 3], [0.2, 0.2, 0.2]) == {"r": None, "ci95": [None, None], "n": 3, "defined": 0}
