"""Shapley value estimators over coalition masks, all evaluating their coalitions in one batch.

Shared interface: `estimator(value, n, ...) -> phi [n, ...]`, where `value(masks)` takes a
[M, n] boolean array of coalitions and returns [M] or [M, P] values (P games at once, e.g.
one per test problem; Shapley values are linear, so phi has the trailing P axis too). Each
estimator first draws every coalition it needs, then asks `value` once; wrap `value` in
`Memo` so that each distinct coalition is scored once across calls (SalaMA's memo table).

- `exact`: enumeration of all 2^n coalitions (n <= 12), Eq. 1 of SalaMAnder.
- `salama`: SalaMAnder's stratified estimator (Algorithm 1 / Eq. 3): for each player and
  order r, min(m, C(n-1, r-1)) distinct (r-1)-subsets drawn without replacement.
- `permutation`: Monte Carlo over random orderings (Castro et al. 2009); `permutation_sampling`
  takes the orderings and also returns the standard error.
- `kernel_shap`: Shapley-kernel weighted regression with the efficiency constraint
  (Lundberg & Lee 2017), coalition sizes sampled from the kernel.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

from jaxinterp.errors import ArgumentError

ValueFn = Callable[[np.ndarray], np.ndarray]
MAX_EXACT = 12


class Memo:
    """`value` with a memo table: each distinct coalition is evaluated once, new ones in one batch.

    `table` pre-fills it ({mask.tobytes(): value}); with `value` None only pre-filled coalitions answer.
    `prefetch` queues coalitions a caller will ask for later, to be evaluated in the next batch (a
    value function that shares work within a batch, such as a prefix trie, then shares it with them).
    """

    def __init__(self, value: ValueFn | None, table: dict[bytes, np.ndarray] | None = None):
        self.value = value
        self.table: dict[bytes, np.ndarray] = dict(table or {})
        self.pending: dict[bytes, np.ndarray] = {}

    def prefetch(self, masks: np.ndarray) -> None:
        """Evaluates `masks` with the next batch of new coalitions (not before)."""
        self.pending.update((row.tobytes(), row) for row in np.asarray(masks, bool) if row.tobytes() not in self.table)

    @property
    def evaluations(self) -> int:
        return len(self.table)

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, bool)
        keys = [row.tobytes() for row in masks]
        new = {k: row for k, row in zip(keys, masks) if k not in self.table}
        if new:
            new.update((k, row) for k, row in self.pending.items() if k not in self.table)
            self.pending = {}
        if new and self.value is None:
            raise ArgumentError(f"masks: {len(new)} coalitions are not in the memo table and no value function was given")
        if new:
            values = np.asarray(self.value(np.stack(list(new.values()))))
            self.table.update(zip(new, values))
        return np.stack([self.table[k] for k in keys])


def _check_n(n: int, limit: int | None = None) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1 or (limit is not None and n > limit):
        raise ArgumentError(f"n: expected an int in [1, {limit or 'inf'}], found {n!r}")


def _masks(subsets, n: int) -> np.ndarray:
    masks = np.zeros((len(subsets), n), bool)
    for row, subset in enumerate(subsets):
        masks[row, list(subset)] = True
    return masks


def exact(value: ValueFn, n: int) -> np.ndarray:
    """phi(i) = sum_{S not containing i} |S|! (n-|S|-1)! / n! [v(S u {i}) - v(S)] (Eq. 1), over all 2^n coalitions."""
    _check_n(n, MAX_EXACT)
    masks = ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)
    values = np.asarray(value(masks), np.float64)
    sizes = masks.sum(1)
    phi = np.zeros((n, *values.shape[1:]))
    for i in range(n):
        without = np.flatnonzero(~masks[:, i])  # row k holds the coalition of k's bits
        weight = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in sizes[without]])
        gain = values[without + (1 << i)] - values[without]
        phi[i] = np.tensordot(weight, gain, axes=1)
    return phi


def _distinct_subsets(pool: list[int], size: int, count: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """`count` distinct `size`-subsets of `pool`, drawn uniformly without replacement."""
    total = math.comb(len(pool), size)
    if total <= 20000:
        every = list(itertools.combinations(pool, size))
        return [every[k] for k in rng.choice(total, size=count, replace=False)]
    chosen: set[tuple[int, ...]] = set()
    while len(chosen) < count:
        chosen.add(tuple(sorted(rng.choice(pool, size=size, replace=False).tolist())))
    return sorted(chosen)


def salama(value: ValueFn, n: int, *, m: int = 25, seed: int = 0) -> np.ndarray:
    """SalaMA (SalaMAnder Algorithm 1, Eq. 3): phi(i) = (1/n) sum_r mean over sp_r sampled
    (r-1)-subsets S of N \\ {i} of v(S u {i}) - v(S), sp_r = min(m, C(n-1, r-1)).

    Subsets of one stratum are distinct (without replacement), so m >= C(n-1, r-1) for all r
    gives the exact value. `m` = 25 is the paper's recommendation (App. C).
    """
    _check_n(n)
    if m < 1:
        raise ArgumentError(f"m: expected a positive int, found {m!r}")
    rng = np.random.default_rng(seed)
    pairs = []  # (player, stratum size sp, subset)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for r in range(1, n + 1):
            subsets = _distinct_subsets(others, r - 1, min(m, math.comb(n - 1, r - 1)), rng)
            pairs += [(i, len(subsets), s) for s in subsets]
    without = _masks([s for _, _, s in pairs], n)
    with_i = without.copy()
    with_i[np.arange(len(pairs)), [i for i, _, _ in pairs]] = True
    values = np.asarray(value(np.concatenate([without, with_i])), np.float64)
    gains = values[len(pairs):] - values[: len(pairs)]
    phi = np.zeros((n, *values.shape[1:]))
    for row, (i, sp, _) in enumerate(pairs):
        phi[i] += gains[row] / (sp * n)
    return phi


def permutation(value: ValueFn, n: int, *, permutations: int = 100, seed: int = 0) -> np.ndarray:
    """Mean marginal contribution of each player along `permutations` random orderings."""
    rng = np.random.default_rng(seed)
    return permutation_sampling(value, n, np.stack([rng.permutation(n) for _ in range(permutations)]))[0]


def permutation_sampling(value: ValueFn, n: int, orders: np.ndarray, *, antithetic: bool = False
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(phi, its standard error) from the given orderings [P, n] of the players.

    Each ordering scores its n + 1 prefixes; a player's value is the mean of its marginal
    gains, and the standard error is their standard deviation over sqrt(P) (with
    `antithetic`, each ordering is paired with its reverse and a pair counts as one sample).
    """
    _check_n(n)
    orders = np.asarray(orders, np.int64)
    if orders.ndim != 2 or orders.shape[1] != n or not all(sorted(row) == list(range(n)) for row in orders.tolist()):
        raise ArgumentError(f"orders: expected [P, {n}] permutations of 0..{n - 1}, found shape {orders.shape}")
    if antithetic:
        orders = np.concatenate([orders, orders[:, ::-1]])
    count = len(orders)
    prefixes = np.zeros((count, n + 1, n), bool)
    for k in range(n):
        prefixes[np.arange(count), k + 1:, orders[:, k]] = True
    values = np.asarray(value(prefixes.reshape(-1, n)), np.float64)
    values = values.reshape(count, n + 1, *values.shape[1:])
    gains = values[:, 1:] - values[:, :-1]  # gain of the k-th player of each ordering
    per_order = np.zeros((count, n, *values.shape[2:]))
    for k in range(n):
        per_order[np.arange(count), orders[:, k]] = gains[:, k]
    if antithetic:
        half = count // 2
        per_order = (per_order[:half] + per_order[half:]) / 2
    samples = len(per_order)
    stderr = per_order.std(axis=0, ddof=1) / np.sqrt(samples) if samples > 1 else np.full(per_order.shape[1:], np.nan)
    return per_order.mean(axis=0), stderr


def kernel_shap(value: ValueFn, n: int, *, samples: int = 200, seed: int = 0) -> np.ndarray:
    """KernelSHAP: least squares of v(S) - v({}) on the coalition masks, subject to
    sum(phi) = v(N) - v({}), with coalition sizes drawn from the Shapley kernel
    p(s) ~ (n-1) / (s (n-s)) and uniform subsets of each size (so rows carry equal weight)."""
    _check_n(n)
    if n == 1:
        ends = np.asarray(value(np.array([[False], [True]])), np.float64)
        return (ends[1] - ends[0])[None]
    rng = np.random.default_rng(seed)
    sizes = np.arange(1, n)
    kernel = (n - 1) / (sizes * (n - sizes))
    drawn = rng.choice(sizes, size=samples, p=kernel / kernel.sum())
    masks = np.stack([np.isin(np.arange(n), rng.choice(n, size=s, replace=False)) for s in drawn])
    values = np.asarray(value(np.concatenate([np.zeros((1, n), bool), np.ones((1, n), bool), masks])), np.float64)
    empty, total, values = values[0], values[1], values[2:] - values[0]
    # eliminate the last player with the constraint phi_n = (total - empty) - sum_{i<n} phi_i
    x = masks[:, :-1].astype(np.float64) - masks[:, -1:].astype(np.float64)
    y = values - masks[:, -1].reshape(-1, *([1] * (values.ndim - 1))) * (total - empty)
    head = np.linalg.lstsq(x, y.reshape(samples, -1), rcond=None)[0].reshape(n - 1, *values.shape[1:])
    return np.concatenate([head, (total - empty - head.sum(0))[None]])


ESTIMATORS = {"exact": exact, "salama": salama, "permutation": permutation, "kernel_shap": kernel_shap}
