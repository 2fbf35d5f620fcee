"""The shared-prefix helpers' bookkeeping: bucket starts, bucket lookup, padded counts (their runs are
tested where they are used: tests/test_patching.py and tests/test_feature_attribution.py)."""

from __future__ import annotations

import numpy as np

from jaxinterp import prefix


def test_bucket_starts_spread_over_the_distinct_starts_and_keep_the_smallest():
    assert prefix.bucket_starts([7, 3, 3, 9, 5, 11, 13], 3) == (3, 7, 13)
    assert prefix.bucket_starts([4, 4, 4], 8) == (4,)
    assert prefix.bucket_starts([2, 6], 1) == (2,)


def test_bucket_of_is_the_longest_bucket_at_or_before():
    np.testing.assert_array_equal(prefix.bucket_of(np.array([3, 4, 7, 12, 13, 99]), (3, 7, 13)), [0, 0, 1, 1, 2, 2])


def test_padded_count_is_a_power_of_two_or_three_quarters_of_one():
    got = [prefix.padded_count(n) for n in range(1, 26)]
    assert got == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16, 16, 16, 16, 24, 24, 24, 24, 24, 24, 24, 24, 32]
    assert all(n <= prefix.padded_count(n) < 1.5 * n + 1 for n in range(1, 1000))
