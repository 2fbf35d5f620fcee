"""A prefix trie of token rows: every distinct leading run of slots is computed once.

Perturbation methods score many rows that are one prompt with parts removed: coalitions of
features, a demonstration's expressions deleted before each of several questions. Two rows
that agree on slots 0..c-1 (tokens, mask and positions) have equal activations there in a
causal decoder, so the trie cuts the rows at a few slots (its levels): at each level, every
distinct prefix up to the level's end (a node) runs only its own segment, continuing its
parent node's KV cache, and the last level scores each row. The slots every row shares (the
root: a system prompt, a template, the unperturbed leading features) run once. What a sampled
Shapley estimate asks for shares far more than the unperturbed prompt (a depth-one trie): on a
10-feature prompt, four permutations compute about a third of the slots that continuing the
prompt from each row's first removed feature does.

Rows come from the host (re-tokenised text, masks applied to a prompt), so any perturbation
that yields token rows shares the engine; the cuts are chosen by dynamic programming over the
slots where rows diverge, minimising the slots the compiled programs compute (node counts as
padded by `padded_rows`, segment lengths by `padded_width`) over at most `levels` levels after
the root. Each level is one `sweep` whose start is an argument, so levels of equal padded shape
share a compiled program. Rows are grouped (in sorted order, so a group keeps most of the
sharing) so that one level's caches fit `memory_budget`. A row's mask may drop slots (deletion
without re-tokenising): each node carries the logits of its last kept slot, so the slot that
predicts an answer token may lie in an earlier level.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from tqdm.auto import tqdm

from jaxinterp.errors import ArgumentError
from jaxinterp.models import make_batch
from jaxinterp.sweep import DEFAULT_BUDGET, parse_budget, sweep

# fn(logits [1, L, V] float32, row: this row's fields, predictors [T]: the index into `logits` of the
# logits that predict each slot) -> the row's value (a scalar)
Score = Callable[[Array, Mapping[str, Array], Array], Array]
KEYS = ("tokens", "mask", "positions")  # the fields that make two prefixes the same computation


WIDTH_STEP = 8  # segment lengths round up to a multiple of this: little padding, aligned vectors


def padded_width(length: int) -> int:
    """A segment of `length` slots as compiled: rounded up to a multiple of `WIDTH_STEP`."""
    return -(-int(length) // WIDTH_STEP) * WIDTH_STEP


LEVEL_SLOTS = 32  # a level's fixed cost (tracing, dispatch) in slots, so that few rows take few levels


def padded_rows(count: int) -> int:
    """A level's node count as compiled: exact up to 16, else rounded up to four significant bits
    (at most 1/8 padding, eight shapes per doubling, so repeated calls mostly reuse their programs)."""
    step = 1 << max(int(count).bit_length() - 4, 0)
    return -(-int(count) // step) * step


def shared_slots(rows: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(order [N], shared [N-1]): the rows sorted so that equal prefixes are neighbours, and how many
    leading slots each sorted row shares with the next (T where the two rows are equal)."""
    fields = np.stack([np.asarray(rows[name], np.int64) for name in KEYS], axis=-1)  # [N, T, 3]
    count, width = fields.shape[:2]
    order = np.lexsort(fields.reshape(count, -1).T[::-1])
    fields = fields[order]
    differ = (fields[1:] != fields[:-1]).any(axis=-1)  # [N-1, T]
    return order, np.where(differ.any(axis=1), differ.argmax(axis=1), width)


def plan_levels(shared: np.ndarray, root: int, end: int, levels: int) -> tuple[int, ...]:
    """Cut slots root = c_0 < c_1 < ... < c_L = end (L <= `levels`) of sorted rows sharing `shared`
    [N-1] slots with their neighbours: a level runs slots [c_i, c_(i+1)) once per distinct prefix
    up to c_(i+1), and the plan minimises the padded slots computed plus `LEVEL_SLOTS` a level
    (dynamic programming). A node count only grows at a slot where rows diverge, so the candidate
    cuts are those slots."""
    shared = np.asarray(shared, np.int64)
    cuts = np.concatenate([[root], np.unique(shared[(shared > root) & (shared < end)]), [end]])
    nodes = np.array([padded_rows(1 + np.sum(shared < cut)) for cut in cuts[:-1]] + [padded_rows(len(shared) + 1)])
    cost = np.full((len(cuts), levels + 1), np.inf)
    came = np.zeros((len(cuts), levels + 1), np.int64)
    cost[0, 0] = 0.0
    for k in range(1, len(cuts)):
        widths = np.array([padded_width(w) + 1 for w in cuts[k] - cuts[:k]])
        step = nodes[k] * widths + LEVEL_SLOTS  # [k] a level from each earlier cut to cut k
        for used in range(1, levels + 1):
            options = cost[:k, used - 1] + step
            came[k, used], cost[k, used] = int(np.argmin(options)), float(np.min(options))
    last = len(cuts) - 1
    used = int(np.argmin(cost[last, 1:])) + 1
    plan = [last]
    while used:
        plan.append(int(came[plan[-1], used]))
        used -= 1
    return tuple(int(cuts[k]) for k in plan[::-1])


class PrefixTrie:
    """The values of token rows, computed level by level (module docstring).

    Called with rows: a mapping of [N, T] `tokens`, `mask`, `positions` and any further per-row
    fields `score` reads (answer slots, say); returns [N] float64. `share=False` runs every row
    whole (a bidirectional model shares nothing). `levels` bounds the levels after the root;
    `memory_budget` sizes the groups of rows and, with `chunk_size` (nodes a call), each level's `sweep`.
    `served` / `slots` count the rows' slots not computed (read from a cache or a duplicate row) /
    in all, across calls; `root` is the last call's slots shared by every row.
    """

    def __init__(self, model: Any, score: Score, *, share: bool, levels: int,
                 memory_budget: int | str = DEFAULT_BUDGET, chunk_size: int | None = None, progress: bool = False):
        if not isinstance(levels, int) or levels < 1:
            raise ArgumentError(f"levels: expected an integer >= 1, found {levels!r}")
        self.model, self.score, self.share_prefix, self.levels = model, score, share, levels
        self.memory_budget, self.chunk_size, self.progress = memory_budget, chunk_size, progress
        self.served = self.slots = self.root = 0

    @property
    def share(self) -> float:
        return self.served / self.slots if self.slots else 0.0

    def __call__(self, rows: Mapping[str, Any]) -> np.ndarray:
        rows = {name: np.asarray(x) for name, x in rows.items()}
        missing = [name for name in KEYS if name not in rows]
        if missing:
            raise ArgumentError(f"rows: expected the fields {KEYS}, missing {missing}")
        chex.assert_rank([rows[name] for name in KEYS], 2)
        chex.assert_equal_shape([rows[name] for name in KEYS])
        count, length = rows["tokens"].shape
        ranked, shared = shared_slots(rows)
        distinct = np.concatenate([[True], shared < length])  # the first of each run of equal rows
        of_distinct = np.cumsum(distinct) - 1  # each sorted row's distinct row
        order, shared = ranked[distinct], shared[distinct[1:]]
        self.root = int(shared.min()) if self.share_prefix and shared.size else 0
        size = padded_width(length) + WIDTH_STEP  # room for every padded segment: no slice is clamped
        padded = {name: np.pad(x, [(0, 0), (0, size - length)] + [(0, 0)] * (x.ndim - 2)) if name in KEYS else x
                  for name, x in rows.items()}
        group = self._group_size(size)
        values = np.empty(len(order), np.float64)
        bar = tqdm(total=len(order), desc="prefix trie", unit="row", disable=not self.progress, leave=False)
        for at in range(0, len(order), group):
            members = order[at:at + group]
            within = shared[at:at + len(members) - 1]
            part = {name: x[members] for name, x in padded.items()}
            values[at:at + len(members)] = self._values(part, within, length, size)
            bar.update(len(members))
        bar.close()
        self.slots += count * length
        out = np.empty(count, np.float64)
        out[ranked] = values[of_distinct]
        return out

    def _group_size(self, size: int) -> int:
        """Rows whose caches (parents, gathered and written: three per node) fit the memory budget."""
        cache = jax.eval_shape(lambda: self.model.empty_cache(1, size))  # shapes only, nothing allocated
        per_node = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
        return max(1, parse_budget(self.memory_budget) // (3 * per_node))

    def _values(self, rows: dict, shared: np.ndarray, length: int, size: int) -> np.ndarray:
        """The values of one group of distinct sorted rows, running the trie's levels in order."""
        count = len(rows["tokens"])
        root = int(shared.min()) if self.share_prefix and shared.size else 0
        plan = plan_levels(shared, root, length, self.levels if self.share_prefix else 1)
        plan = ((0,) if root else ()) + plan
        parents, node_of = None, np.zeros(count, np.int64)  # the last level's nodes and each row's node
        computed = 0
        for start, end in zip(plan, plan[1:]):
            final = end == length
            splits = np.ones(count - 1, bool) if final else shared < end  # a new node where rows diverge
            firsts = np.flatnonzero(np.concatenate([[True], splits]))  # each node's first row
            computed += len(firsts) * (end - start)
            take = np.concatenate([firsts, np.repeat(firsts[-1:], padded_rows(firsts.size) - firsts.size)])
            variations = {"row": {name: jnp.asarray(x[take]) for name, x in rows.items()},
                          "parent": jnp.asarray(node_of[take], jnp.int32)}
            program = level_program(self.score, padded_width(end - start), size, final, len(plan) == 2 and not start)
            state = sweep(program, (self.model, jnp.int32(start), jnp.int32(end), parents), variations,
                          chunk_size=self.chunk_size, memory_budget=self.memory_budget, progress=False)
            parents, node_of = state, np.cumsum(np.concatenate([[0], splits]))
        self.served += count * length - computed
        return np.asarray(state, np.float64)[:count]


@functools.lru_cache(maxsize=64)
def level_program(score: Score, width: int, size: int, final: bool, alone: bool) -> Callable:
    """fn((model, start, end, parents), node) for one level of `width` padded slots: the node's cache
    after its segment and the logits of its last kept slot, or at the final level its row's value.
    `alone`: a single level from slot 0, so the whole row runs without a cache. The model is an input,
    not a closure, so one function object serves every call with the same `score` and `sweep` reuses
    its trace."""

    def level(inputs: tuple, node: dict) -> Any:
        model, start, end, parents = inputs
        row = node["row"]
        slots = jnp.arange(size)
        batch = make_batch(row["tokens"][None], row["mask"][None], positions=row["positions"][None])
        last_kept = jax.lax.cummax(jnp.where(row["mask"], slots, 0))  # at or before each slot
        predictors = jnp.concatenate([jnp.zeros(1, last_kept.dtype), last_kept[:-1]])  # of each slot's token
        if alone:
            return score(model(batch).astype(jnp.float32), row, predictors)
        if parents is None:  # the first level: nothing before it
            parent = {"cache": model.empty_cache(1, size), "carried": jnp.zeros(model.config.vocab_size)}
        else:
            parent = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, node["parent"], keepdims=False), parents)
        piece = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, width, axis=1)
                             if x is not None and x.ndim == 2 else x, batch)
        run = model.run(piece, cache=parent["cache"].replace(length=start))
        logits = run.logits.astype(jnp.float32)
        if final:  # the logits from slot `start` on, after the carried logits of the last kept slot before it
            joined = jnp.concatenate([parent["carried"][None, None], logits], axis=1)
            return score(joined, row, jnp.where(predictors >= start, predictors - start + 1, 0))
        last = last_kept[end - 1]
        at = jax.lax.dynamic_index_in_dim(logits[0], jnp.clip(last - start, 0, width - 1), keepdims=False)
        return {"cache": run.cache, "carried": jnp.where(last >= start, at, parent["carried"])}

    return level
