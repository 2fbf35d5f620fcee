"""Bootstrap 95% intervals for headline figures: a mean over items, and a paired difference.

Percentile bootstrap over items (resampled with replacement, `resamples` times, a fixed seed so
a rerun writes the same interval). Every figure carries its item count `n`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_mean(values: Sequence[float] | np.ndarray, *, resamples: int = 2000, seed: int = 0) -> dict:
    """{"mean", "ci95": [low, high], "n"} of the mean of `values` (one per item)."""
    values = np.asarray(values, np.float64).reshape(-1)
    if values.size == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(values.mean()), "ci95": [float(low), float(high)], "n": int(values.size)}


def paired_difference(base: Sequence[float] | np.ndarray, other: Sequence[float] | np.ndarray, *,
                      resamples: int = 2000, seed: int = 0) -> dict:
    """`bootstrap_mean` of other - base on the same items (a paired comparison of two settings)."""
    base, other = np.asarray(base, np.float64), np.asarray(other, np.float64)
    if base.shape != other.shape:
        raise ValueError(f"other: expected the shape of base {base.shape}, found {other.shape}")
    return bootstrap_mean(other - base, resamples=resamples, seed=seed)


def bootstrap_correlation(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *,
                          resamples: int = 2000, seed: int = 0) -> dict:
    """{"r", "ci95", "n", "defined"}: Pearson r of paired items with a percentile bootstrap over the
    pairs. Resamples where either side is constant have no r and are left out ("defined" counts the
    rest); r itself is None when either side is constant."""
    x, y = np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"y: expected the shape of x {x.shape}, found {y.shape}")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"r": None, "ci95": [None, None], "n": int(x.size), "defined": 0}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, x.size, (resamples, x.size))
    xs, ys = x[picks] - x[picks].mean(1, keepdims=True), y[picks] - y[picks].mean(1, keepdims=True)
    defined = (np.ptp(x[picks], 1) > 0) & (np.ptp(y[picks], 1) > 0)
    found = (xs * ys).sum(1)[defined] / np.sqrt((xs**2).sum(1) * (ys**2).sum(1))[defined]
    low, high = np.percentile(found, [2.5, 97.5])
    return {"r": float(np.corrcoef(x, y)[0, 1]), "ci95": [float(low), float(high)], "n": int(x.size),
            "defined": int(found.size)}
