"""SOM long-text planning: a self-organising map over sentence embeddings, the directed
transition graph it induces, and three alignment planners (path, subgraph, top-k path union).

RECONSTRUCTION. The 2021 paper this follows (document paths of sentence embeddings, a revised
SOM, a directed semantic graph, subgraph alignment, a pre-trained decoder) was not located;
only its abstract is known (see ../shared/methods/som_longtext.md). Every step below is the
standard form of what the abstract names, and each unknown is a parameter:

1. Each training document is a path of sentence embeddings e_1 -> ... -> e_n.
2. A Kohonen SOM (units u_j with weights w_j on a rows x cols grid) clusters all sentences:
   for each sentence x, b = argmin_j d(x, w_j) and
   w_j <- w_j + eta(t) h_jb(t) (x - w_j), h_jb = exp(-||r_j - r_b||^2 / (2 sigma(t)^2))      (SOM)
   with eta and sigma decaying linearly; `distance` picks Euclidean or cosine matching (the
   paper's "revision" of the SOM is unknown).
3. The graph has the SOM units as vertices and a directed edge a -> b counting every pair of
   consecutive sentences mapped to (a, b); P(b | a) normalises the counts of each row.
4. Alignment: the input's sentences are mapped to units (its own path, the matched units),
   then one of three planners, the abstract's "three subgraph alignment methods" (their forms
   are unknown; these are the standard choices):
   (a) path alignment (`plan`, `best_path`): the plan continues from the last matched unit
       along the maximum-probability path of the requested length,
       argmax prod P(u_{t+1} | u_t), found exactly by dynamic programming (Viterbi);
   (b) subgraph alignment (`subgraph_alignment`): the `size` units most probably reached
       from the matched ones, each scored by its best path's probability
       max prod P(u_{t+1} | u_t) (Dijkstra on -log P), grown from the matched units so the
       subgraph is connected to them, and linearised in the order it grew;
   (c) hybrid (`hybrid_alignment`): the union of the k most probable paths from the last
       matched unit (k-best Viterbi, `k_best_paths`), linearised best path first.
5. Decoding with a pre-trained LM conditioned on the plan (e.g. each unit's prototype
   sentence, `prototypes`) is left to the caller.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxinterp.errors import ArgumentError

Array = jax.Array
DISTANCES = ("euclidean", "cosine")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SOMConfig:
    """Settings of the map (all inferred; the paper's values are unknown).

    Attributes:
      rows, cols: grid of units (the spec suggests 10x10 to 30x30 for real corpora).
      epochs: passes over the sentences, each in a fresh random order.
      eta_start, eta_end: learning rate, decayed linearly over all updates.
      sigma_start, sigma_end: neighbourhood radius in grid units, decayed linearly
        (sigma_start None: half the larger grid side).
      distance: "euclidean" or "cosine" best-matching-unit search.
    """

    rows: int = 10
    cols: int = 10
    epochs: int = 10
    eta_start: float = 0.5
    eta_end: float = 0.01
    sigma_start: float | None = None
    sigma_end: float = 0.5
    distance: str = "euclidean"

    def __post_init__(self):
        if self.rows < 1 or self.cols < 1 or self.epochs < 1:
            raise ArgumentError(f"rows, cols, epochs: expected positive ints, found {self.rows}, {self.cols}, {self.epochs}")
        if self.distance not in DISTANCES:
            raise ArgumentError(f"distance: expected one of {DISTANCES}, found {self.distance!r}")


@struct.dataclass
class SOM:
    """A trained map: unit weights [U, D], unit grid coordinates [U, 2], and the distance it
    was trained with (every query of the map uses the same one)."""

    weights: Array
    grid: Array
    distance: str = struct.field(pytree_node=False, default="euclidean")


def _grid(rows: int, cols: int) -> Array:
    return jnp.stack(jnp.meshgrid(jnp.arange(rows), jnp.arange(cols), indexing="ij"), -1).reshape(-1, 2).astype(jnp.float32)


def _distances(x: Array, weights: Array, distance: str) -> Array:
    """[..., U] distance of each x [..., D] to every unit."""
    if distance == "cosine":
        unit = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)  # noqa: E731
        return 1.0 - unit(x) @ unit(weights).T
    return jnp.sum(x**2, -1, keepdims=True) - 2 * x @ weights.T + jnp.sum(weights**2, -1)


def som_update(weights: Array, grid: Array, x: Array, eta: Array, sigma: Array, distance: str = "euclidean") -> Array:
    """One Kohonen update for sample x [D] (eq. SOM above)."""
    best = jnp.argmin(_distances(x, weights, distance))
    h = jnp.exp(-jnp.sum((grid - grid[best]) ** 2, -1) / (2 * sigma**2))
    return weights + eta * h[:, None] * (x - weights)


def train_som(embeddings: Array, config: SOMConfig, key: Array) -> SOM:
    """Fits a SOM to sentence embeddings [N, D]; weights start at random distinct sentences."""
    x = jnp.asarray(embeddings, jnp.float32)
    if x.ndim != 2 or 0 in x.shape:
        raise ArgumentError(f"embeddings: expected a non-empty [N, D] array, found shape {x.shape}")
    units = config.rows * config.cols
    init_key, order_key = jax.random.split(key)
    start = x[jax.random.choice(init_key, x.shape[0], (units,), replace=units > x.shape[0])]
    order = jnp.concatenate([jax.random.permutation(k, x.shape[0]) for k in jax.random.split(order_key, config.epochs)])
    fraction = jnp.arange(order.shape[0]) / max(order.shape[0] - 1, 1)
    sigma_start = config.sigma_start or max(config.rows, config.cols) / 2
    etas = config.eta_start + (config.eta_end - config.eta_start) * fraction
    sigmas = sigma_start + (config.sigma_end - sigma_start) * fraction
    grid = _grid(config.rows, config.cols)

    def step(weights, inputs):
        i, eta, sigma = inputs
        return som_update(weights, grid, x[i], eta, sigma, config.distance), None

    weights, _ = jax.lax.scan(step, start, (order, etas, sigmas))
    return SOM(weights=weights, grid=grid, distance=config.distance)


def assign(som: SOM, embeddings: Array) -> Array:
    """Best-matching unit [N] of each embedding [N, D]."""
    return jnp.argmin(_distances(jnp.asarray(embeddings, jnp.float32), som.weights, som.distance), -1)


def transition_graph(paths: Sequence[Array], num_units: int) -> Array:
    """Directed graph [U, U]: counts[a, b] = consecutive sentence pairs mapped to units (a, b).

    `paths` holds one array of unit ids per document, in sentence order.
    """
    if not paths:
        raise ArgumentError("paths: expected at least one document path, found none")
    pairs = [np.stack([np.asarray(p)[:-1], np.asarray(p)[1:]], 1) for p in paths if len(p) > 1]
    if not pairs:
        raise ArgumentError("paths: expected a document with at least two sentences, found none")
    pairs = jnp.asarray(np.concatenate(pairs))
    return jnp.zeros((num_units, num_units), jnp.float32).at[pairs[:, 0], pairs[:, 1]].add(1.0)


def transition_probabilities(counts: Array, *, self_loops: bool = False, smoothing: float = 0.0) -> Array:
    """P(b | a) from edge counts: rows normalised after adding `smoothing` to every edge;
    `self_loops=False` drops a -> a edges (consecutive sentences of one cluster), so the plan
    moves on. A unit with no outgoing edge gets an all-zero row."""
    counts = counts + smoothing
    if not self_loops:
        counts = counts * (1 - jnp.eye(counts.shape[0], dtype=counts.dtype))
    totals = counts.sum(1, keepdims=True)
    return jnp.where(totals > 0, counts / jnp.where(totals > 0, totals, 1.0), 0.0)


def _check_graph(probabilities: Array) -> int:
    """Number of units of a [U, U] transition matrix; ArgumentError for any other shape."""
    shape = np.shape(probabilities)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise ArgumentError(f"probabilities: expected a non-empty square [U, U] array, found shape {shape}")
    return shape[0]


def _check_start(start: int | Array, units: int) -> None:
    """ArgumentError unless `start` is one unit id in [0, units) (a traced start is not checked)."""
    if isinstance(start, jax.core.Tracer):
        return
    value = np.asarray(start)
    if value.shape != () or not np.issubdtype(value.dtype, np.integer) or not 0 <= value < units:
        raise ArgumentError(f"start: expected one unit id in [0, {units}), found {value.dtype} {np.array2string(value, threshold=8)}")


def k_best_paths(probabilities: Array, start: int | Array, length: int, k: int) -> tuple[Array, Array]:
    """The k maximum-probability paths of `length` units starting at `start` (k-best Viterbi).

    Each unit keeps its k best partial paths; a step extends every one of them along every
    edge and keeps the k best per unit again, so the k best complete paths are exact. Paths
    may revisit units, as in `best_path`. Paths of exactly equal log-probability are ordered
    by their last unit (lower first), then their second-to-last, and so on back to the start.
    Returns (units [k, length], log-probabilities [k]) best first; rows beyond the number of
    existing paths have log-probability -inf (their units are meaningless). `start` is an int
    or a jax array; a traced one is not range-checked, and an id outside the graph starts no path.
    """
    units = _check_graph(probabilities)
    if length < 1:
        raise ArgumentError(f"length: expected at least 1, found {length}")
    if k < 1:
        raise ArgumentError(f"k: expected at least 1 path, found {k}")
    _check_start(start, units)
    log_p = jnp.log(jnp.asarray(probabilities))
    score = jnp.full((units, k), -jnp.inf).at[:, 0].set(jnp.where(jnp.arange(units) == start, 0.0, -jnp.inf))

    def forward(score, _):  # score [unit, rank] -> the k best [to, k] among all (from, rank) extensions
        candidates = score[:, :, None] + log_p[:, None, :]  # [from, rank, to]
        return jax.lax.top_k(candidates.reshape(units * k, units).T, k)  # index: from * k + rank

    score, back = jax.lax.scan(forward, score, None, length=length - 1)  # back [length - 1, to, k]
    final, index = jax.lax.top_k(score.reshape(-1), k)  # index: last unit * k + rank

    def backward(index, pointers):
        return pointers[index // k, index % k], index // k

    index, later = jax.lax.scan(backward, index, back, reverse=True)  # later [length - 1, k]: units 1..
    return jnp.concatenate([(index // k)[None], later]).T, final


def best_path(probabilities: Array, start: int | Array, length: int) -> tuple[Array, Array]:
    """The maximum-probability path of `length` units starting at `start` (Viterbi: `k_best_paths` with k = 1).

    Returns (units [length], log-probability of the path); -inf when no path is that long.
    """
    paths, log_p = k_best_paths(probabilities, start, length, 1)
    return paths[0], log_p[0]


@dataclasses.dataclass(frozen=True)
class Alignment:
    """An aligned plan: `units` [M] in plan order (distinct), with `log_probabilities` [M]
    scoring each unit (its meaning is given by the planner that returns it) and `parents` [M],
    the unit each one was reached from (-1 for a matched unit). Every parent comes earlier in
    `units` and has an edge to its unit."""

    units: np.ndarray
    log_probabilities: np.ndarray
    parents: np.ndarray


def _check_matched(matched: Array, units: int) -> np.ndarray:
    """`matched` as a flat array of unit ids; ArgumentError when empty, not integer, or out of range."""
    matched = np.asarray(matched).reshape(-1)
    if matched.size == 0 or not np.issubdtype(matched.dtype, np.integer) or matched.min() < 0 or matched.max() >= units:
        raise ArgumentError(f"matched: expected a non-empty array of unit ids in [0, {units}), "
                            f"found {matched.dtype} {np.array2string(matched, threshold=8)}")
    return matched


def subgraph_alignment(probabilities: Array, matched: Array, size: int) -> Alignment:
    """Subgraph alignment: the `size` units (matched ones included) most probably reached from
    the input's matched units.

    A unit's score is the probability of its best path from any matched unit,
    max prod P(u_{t+1} | u_t) (the matched units score 1). Dijkstra on -log P adds units in
    decreasing score (ties to the lower id), so every added unit's best-path predecessor, its
    parent, is already in the subgraph: the subgraph is connected to the matched units, and
    its growth order, which is returned, puts each unit after its parent. Plan order: the
    distinct matched units in the order they first occur in the input, then the added units.
    Fewer than `size` units are returned when fewer are reachable. `log_probabilities` are the
    log scores.
    """
    units = _check_graph(probabilities)
    probabilities = np.asarray(probabilities, np.float64)
    matched = _check_matched(matched, units)
    roots = matched[np.sort(np.unique(matched, return_index=True)[1])]
    if size < roots.size:
        raise ArgumentError(f"size: expected at least the {roots.size} distinct matched units, found {size}")
    score = np.zeros(units)
    parents = np.full(units, -1)
    done = np.zeros(units, bool)
    score[roots], done[roots] = 1.0, True
    order = []

    def add(unit):
        order.append(unit)
        reached = score[unit] * probabilities[unit]
        better = (reached > score) & ~done
        score[better], parents[better] = reached[better], unit

    for unit in roots:
        add(unit)
    while len(order) < size:
        frontier = np.where(done, 0.0, score)
        unit = int(np.argmax(frontier))
        if frontier[unit] <= 0:
            break
        done[unit] = True
        add(unit)
    order = np.asarray(order)
    return Alignment(units=order, log_probabilities=np.log(score[order]), parents=parents[order])


def hybrid_alignment(probabilities: Array, matched: Array, length: int, k: int) -> Alignment:
    """Hybrid alignment: the union of the k most probable paths of `length` units from the last
    matched unit (`k_best_paths`; the other matched units are not part of it), linearised best
    path first: each unit in the order it first occurs along the paths taken from most to least
    probable.

    `log_probabilities` holds, per unit, the log-probability of the best path it lies on, and
    `parents` its predecessor there (-1 for the start). Paths that do not exist (fewer than k
    of that length) are left out; no units at all when no path is that long.
    """
    start = int(_check_matched(matched, _check_graph(probabilities))[-1])
    paths, log_p = (np.asarray(a) for a in k_best_paths(probabilities, start, length, k))
    units, scores, parents = [], [], []
    for path, score in zip(paths[np.isfinite(log_p)], log_p[np.isfinite(log_p)]):
        for position, unit in enumerate(path):
            if unit not in units:
                units.append(unit)
                scores.append(score)
                parents.append(path[position - 1] if position else -1)
    return Alignment(units=np.asarray(units, int), log_probabilities=np.asarray(scores, np.float64),
                     parents=np.asarray(parents, int))


def plan(som: SOM, probabilities: Array, prompt: Array, length: int) -> Array:
    """Path alignment: the prompt's sentence embeddings [P, D] are mapped to units, then the
    plan continues from the last one along `best_path`. Returns [length] units (the
    prompt's own units first; only its first `length` when it is that long)."""
    if length < 1:
        raise ArgumentError(f"length: expected at least 1, found {length}")
    prompt_units = assign(som, prompt)
    if length <= prompt_units.shape[0]:
        return prompt_units[:length]
    continuation, _ = best_path(probabilities, prompt_units[-1], length - prompt_units.shape[0] + 1)
    return jnp.concatenate([prompt_units, continuation[1:]])


def prototypes(som: SOM, embeddings: Array) -> Array:
    """Index [U] of the sentence nearest to each unit: the material a decoder is given per planned unit."""
    return jnp.argmin(_distances(som.weights, jnp.asarray(embeddings, jnp.float32), som.distance), -1)
