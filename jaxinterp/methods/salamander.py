"""SalaMAnder: Shapley attribution of the mathematical expressions in few-shot demonstrations, and CoSP.

Xin et al., Findings of EMNLP 2025 (arXiv:2509.16561). The players are the expressions in the
demonstrations' worked answers (GSM8K `48/2 = <<48/2=24>>24` and plain `a op b = c`);
everything else is the whiteboard, present in every coalition. A coalition prompt deletes
the expressions outside the coalition.

Batched coalitions (`deletion`): every (coalition, test problem) row is one prompt, and all rows
are scored by a prefix trie of KV caches (`jaxinterp.prefix_trie`, the engine of
`feature_attribution`), never one prompt at a time: rows that agree on their leading tokens
(the demonstrations up to the first deleted expression, whichever test problem follows) compute
them once.
- `text` (default; the spec's inferred reading of the paper): the expressions outside the
  coalition are deleted from the text, which is tokenised again on the host; rows are
  right-padded to a common width (a multiple of 16, so few widths compile).
- `tokens`: the full prompt is tokenised once and each token knows its player (-1 for the
  whiteboard); deleting expressions is a token mask with positions recounted over the kept
  tokens. Everything stays on the device, but a BPE tokenizer merges the characters at a cut
  differently (with SmolLM2's, 60 of 64 benchmark rows differ from the re-tokenised text, and
  their values by up to 0.5): an approximation, exact only for tokenizers that never merge
  across an expression's edge.

Value (Eq. 2): v(S) = conf(S) * 1[y_pred(S) = y*], evaluated by teacher forcing the gold
answer y* after the prompt: y_pred = y* exactly when greedy decoding would emit y*, i.e.
when every gold answer token is the argmax given the gold tokens before it, and conf is the
mean over the answer tokens of the log-probability, probability or logit (`confidence`;
the paper's text is ambiguous, spec Unknowns).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxinterp import prefix
from jaxinterp.errors import ArgumentError
from jaxinterp.methods import shapley
from jaxinterp.methods.reasoning_segments import Step, token_steps
from jaxinterp.models import Batch, make_batch
from jaxinterp.prefix_trie import PrefixTrie

Array = jax.Array
CONFIDENCES = ("log_prob", "probability", "logit")
_NUMBER = r"\$?-?\d+(?:[.,]\d+)*%?"
_TERM = rf"(?:\(\s*)?{_NUMBER}(?:\s*\))?"
# lhs (at least one operator) = [<<calculator annotation>>] result
EXPRESSION = re.compile(rf"{_TERM}(?:\s*[-+*/×÷x]\s*{_TERM})+\s*=\s*(?:<<[^>]*>>\s*)?{_NUMBER}")


def find_expressions(text: str) -> list[tuple[int, int]]:
    """[start, end) character spans of the mathematical expressions in `text` (spec step 1;
    the paper does not say how it finds them, so this regex is our rule)."""
    return [match.span() for match in EXPRESSION.finditer(text)]


def coalition_text(text: str, spans: Sequence[tuple[int, int]], keep: Sequence[bool]) -> str:
    """`text` with the expressions not kept deleted (spec step 2), for display and per-prompt scoring."""
    pieces, last = [], 0
    for (start, end), kept in zip(spans, keep):
        if not kept:
            pieces.append(text[last:start])
            last = end
    return "".join(pieces) + text[last:]


DELETIONS = ("text", "tokens")


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """What a game was built from, to tokenise coalition prompts again (`deletion="text"`)."""

    tokenizer: Any
    demonstrations: str
    spans: tuple[tuple[int, int], ...]
    tests: tuple[tuple[str, str], ...]
    query: str
    answer: str

    def prompt(self, problem: int, keep: Sequence[bool]) -> tuple[str, str]:
        """(prompt, prompt + gold answer) of test problem `problem` with the coalition `keep`."""
        question, gold = self.tests[problem]
        prompt = coalition_text(self.demonstrations, self.spans, keep) + self.query.format(question=question)
        return prompt, prompt + self.answer.format(answer=gold)


@struct.dataclass
class Game:
    """One demonstration set against P test problems, tokenised once (right-padded to T).

    Attributes:
      tokens, mask: [P, T] prompt + gold answer of each test problem.
      players: [P, T] expression index of each token, -1 for the whiteboard.
      answer_positions, answer_tokens, answer_mask: [P, A] the gold answer tokens and where they sit.
      n: number of players.
      source: the texts and tokenizer it came from (None for merged games).
    """

    tokens: Array
    mask: Array
    players: Array
    answer_positions: Array
    answer_tokens: Array
    answer_mask: Array
    n: int = struct.field(pytree_node=False)
    source: Source | None = struct.field(pytree_node=False, default=None)


def _encode(tokenizer, prompt: str, text: str) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """(ids, indices of the tokens after `prompt`, character offsets) of `text`."""
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    offsets = encoded["offset_mapping"]
    return encoded["input_ids"], [i for i, (a, b) in enumerate(offsets) if a >= len(prompt) and b > a], offsets


def _padded(rows: Sequence[tuple[list[int], list[int]]], multiple: int = 1) -> dict[str, Array]:
    """Right-padded [R, T] tokens and mask and [R, A] answer positions, tokens and mask of
    (ids, answer indices) rows; T rounded up to `multiple`."""
    width = -(-max(len(ids) for ids, _ in rows) // multiple) * multiple
    answers = max(len(a) for _, a in rows)
    pad = lambda seq, size, value: list(seq) + [value] * (size - len(seq))  # noqa: E731
    return {
        "tokens": jnp.asarray([pad(ids, width, 0) for ids, _ in rows], jnp.int32),
        "mask": jnp.asarray([pad([True] * len(ids), width, False) for ids, _ in rows]),
        "answer_positions": jnp.asarray([pad(a, answers, a[-1]) for _, a in rows], jnp.int32),
        "answer_tokens": jnp.asarray([pad([ids[i] for i in a], answers, ids[a[-1]]) for ids, a in rows], jnp.int32),
        "answer_mask": jnp.asarray([pad([True] * len(a), answers, False) for _, a in rows]),
    }


def build_game(tokenizer, demonstrations: str, tests: Sequence[tuple[str, str]], *,
               query: str = "Q: {question}\nA: The answer is", answer: str = " {answer}") -> tuple[Game, str]:
    """A `Game` for `demonstrations` (the few-shot text, players found by `find_expressions`)
    followed by each (question, gold answer) of `tests` in the `query` / `answer` templates.

    Returns (game, the full prompt of the first test problem).
    """
    if not tests:
        raise ArgumentError("tests: expected at least one (question, answer) pair, found none")
    spans = find_expressions(demonstrations)
    if not spans:
        raise ArgumentError(f"demonstrations: expected at least one expression like 'a + b = c', found none in {demonstrations[:80]!r}")
    source = Source(tokenizer, demonstrations, tuple(spans), tuple((str(q), str(a)) for q, a in tests), query, answer)
    rows, players = [], []
    for problem in range(len(tests)):
        ids, in_answer, offsets = _encode(tokenizer, *source.prompt(problem, [True] * len(spans)))
        rows.append((ids, in_answer))
        players.append(token_steps(offsets, [Step("expression", a, b) for a, b in spans]))
    arrays = _padded(rows)
    width = arrays["tokens"].shape[1]
    players = jnp.asarray([list(p) + [-1] * (width - len(p)) for p in players], jnp.int32)
    return Game(**arrays, players=players, n=len(spans), source=source), source.prompt(0, [True] * len(spans))[0]


def answer_value(logits: Array, answer_positions: Array, answer_tokens: Array, answer_mask: Array,
                 confidence: str = "probability") -> Array:
    """v = conf * 1[greedy emits the gold answer] (Eq. 2) from teacher-forced logits [T, V].

    `confidence`: mean over answer tokens of `log_prob` (the formula of Eq. 2), `probability`
    (default: keeps v(correct) > v(wrong) = 0, the spec's inferred safe choice) or `logit`
    (the paper's prose).
    """
    chex.assert_rank(logits, 2)
    return answer_score(logits[answer_positions - 1], answer_tokens, answer_mask, confidence)


def answer_score(before: Array, answer_tokens: Array, answer_mask: Array, confidence: str = "probability") -> Array:
    """`answer_value` from the logits [A, V] that predict each answer token."""
    chex.assert_rank(before, 2)
    chosen = jnp.take_along_axis(before, answer_tokens[:, None], axis=-1)[:, 0]
    log_p = chosen - jax.nn.logsumexp(before, axis=-1)
    correct = jnp.all((jnp.argmax(before, axis=-1) == answer_tokens) | ~answer_mask)
    per_token = {"log_prob": log_p, "probability": jnp.exp(log_p), "logit": chosen}[confidence]
    conf = jnp.sum(per_token * answer_mask) / jnp.maximum(answer_mask.sum(), 1)
    return jnp.where(correct, conf, 0.0)


def coalition_batch(game: Game, problem: Array | int, coalition: Array) -> Batch:
    """The [1, T] batch of test problem `problem` with the expressions outside `coalition` [n]
    masked out and positions counting kept tokens only (`deletion="tokens"`: the deleted prompt up to
    how the tokenizer merges characters at each cut)."""
    players = game.players[problem]
    kept = game.mask[problem] & ((players < 0) | jnp.asarray(coalition)[jnp.maximum(players, 0)])
    return make_batch(game.tokens[problem][None], kept[None], positions=jnp.maximum(jnp.cumsum(kept) - 1, 0)[None])


def row_values(model, game: Game, problems: np.ndarray, coalitions: np.ndarray, *, deletion: str = "text",
               confidence: str = "probability", chunk_size: int | None = 16, progress: bool = False,
               prefix_buckets: int = 8) -> np.ndarray:
    """v of R (test problem, coalition) rows: problems [R] int, coalitions [R, n] bool -> [R]. `deletion`:
    `text` or `tokens` (module docstring). Rows are scored by a prefix trie (`_scored`)."""
    _check(deletion, confidence)
    coalitions = np.asarray(coalitions, bool)
    problems = np.asarray(problems, np.int32)
    if coalitions.ndim != 2 or coalitions.shape[1] != game.n or len(coalitions) != len(problems):
        raise ArgumentError(f"coalitions: expected a [{len(problems)}, {game.n}] boolean array, found shape {coalitions.shape}")
    if deletion == "text":
        rows = _text_rows(_deleted_rows(game, problems, coalitions))
    else:
        batches = jax.vmap(lambda p, keep: coalition_batch(game, p, keep))(problems, coalitions)
        rows = {"tokens": batches.tokens[:, 0], "mask": batches.mask[:, 0], "positions": batches.positions[:, 0],
                **{name: getattr(game, name)[problems] for name in ("answer_positions", "answer_tokens", "answer_mask")}}
    return _scored(model, rows, confidence, chunk_size, progress, prefix_buckets)


def _check(deletion: str, confidence: str) -> None:
    if deletion not in DELETIONS:
        raise ArgumentError(f"deletion: expected one of {DELETIONS}, found {deletion!r}")
    if confidence not in CONFIDENCES:
        raise ArgumentError(f"confidence: expected one of {CONFIDENCES}, found {confidence!r}")


def _deleted_rows(game: Game, problems: np.ndarray, coalitions: np.ndarray) -> list[tuple[list[int], list[int]]]:
    """(ids, answer indices) of each row's prompt with the expressions outside its coalition deleted."""
    if game.source is None:
        raise ArgumentError("deletion='text' needs a game from build_game (merged games keep no text); "
                            "use deletion='tokens' or score each game on its own")
    rows = []
    for problem, keep in zip(problems, np.asarray(coalitions, bool)):
        ids, in_answer, _ = _encode(game.source.tokenizer, *game.source.prompt(int(problem), keep[:len(game.source.spans)]))
        rows.append((ids, in_answer))
    return rows


def _text_rows(encoded: Sequence[tuple[list[int], list[int]]]) -> dict[str, Array]:
    """The trie's rows of tokenised prompts: right-padded to a multiple of 16 (few widths compile), positions 0, 1, ..."""
    rows = _padded(encoded, multiple=16)
    return {**rows, "positions": jnp.broadcast_to(jnp.arange(rows["tokens"].shape[1]), rows["tokens"].shape)}


@functools.cache
def _row_score(confidence: str) -> Callable:
    """The trie's score of a row: `answer_score` of the logits that predict its answer tokens (one function
    a confidence, so the trie's level programs are traced once)."""

    def score(logits: Array, row: dict, predictors: Array) -> Array:
        before = logits[0, predictors[row["answer_positions"]]]
        return answer_score(before, row["answer_tokens"], row["answer_mask"], confidence)

    return score


def _scored(model, rows: dict[str, Array], confidence: str, chunk_size: int | None, progress: bool,
            prefix_buckets: int) -> np.ndarray:
    """v of each row (tokens, mask, positions and answer fields [R, ...]), by a prefix trie
    (`jaxinterp.prefix_trie`): rows that agree on their leading slots (the demonstrations up to the
    first deleted expression, shared across test problems; every deletion pattern so far) compute
    them once, in at most `prefix_buckets` levels after the shared root, `chunk_size` nodes a call."""
    prefix.check_buckets(prefix_buckets)
    trie = PrefixTrie(model, _row_score(confidence), share=prefix.shares_prefix(model), levels=prefix_buckets, chunk_size=chunk_size,
                      progress=progress)
    return trie(rows)


def coalition_values(model, game: Game, coalitions: np.ndarray, **options) -> np.ndarray:
    """v(S) of each coalition [M, n] (bool) on each of the P test problems: [M, P] (`row_values` options)."""
    coalitions = np.asarray(coalitions, bool)
    problems = game.tokens.shape[0]
    values = row_values(model, game, np.tile(np.arange(problems), len(coalitions)),
                        np.repeat(coalitions, problems, axis=0), **options)
    return values.reshape(len(coalitions), problems)


def merge_games(games: Sequence[Game]) -> tuple[Game, list[int]]:
    """One game holding the rows of several (padded to a common width and n): (game, row offset of each)."""
    width = max(g.tokens.shape[1] for g in games)
    answers = max(g.answer_tokens.shape[1] for g in games)
    widen = lambda x, size, value: jnp.pad(x, ((0, 0), (0, size - x.shape[1])), constant_values=value)  # noqa: E731
    merged = Game(
        tokens=jnp.concatenate([widen(g.tokens, width, 0) for g in games]),
        mask=jnp.concatenate([widen(g.mask, width, False) for g in games]),
        players=jnp.concatenate([widen(g.players, width, -1) for g in games]),
        answer_positions=jnp.concatenate([jnp.pad(g.answer_positions, ((0, 0), (0, answers - g.answer_positions.shape[1])), mode="edge") for g in games]),
        answer_tokens=jnp.concatenate([jnp.pad(g.answer_tokens, ((0, 0), (0, answers - g.answer_tokens.shape[1])), mode="edge") for g in games]),
        answer_mask=jnp.concatenate([widen(g.answer_mask, answers, False) for g in games]),
        n=max(g.n for g in games),
    )
    return merged, list(np.cumsum([0] + [g.tokens.shape[0] for g in games[:-1]]))


# ---------------------------------------------------------------------------------------
# Metrics over averaged Shapley values phibar [n] (spec steps 6-8)


def cosp(phibar: Array, lam: float = 0.0) -> float:
    """CoSP_lambda = sum_i 1(phibar_i > 0) - lambda 1(phibar_i <= 0) (spec step 7)."""
    phibar = np.asarray(phibar)
    return float(np.sum(phibar > 0) - lam * np.sum(phibar <= 0))


def ssv(phibar: Array) -> float:
    """SSV: the sum of the averaged Shapley values."""
    return float(np.sum(phibar))


def noe(phibar: Array) -> int:
    """NoE: the number of expressions."""
    return int(np.size(phibar))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r of two equal-length sequences (nan when either is constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


@dataclasses.dataclass(frozen=True)
class Attribution:
    """Shapley values of one demonstration set: phi [n, P] per test problem and their mean phibar [n]."""

    phi: np.ndarray
    evaluations: int

    @property
    def phibar(self) -> np.ndarray:
        return self.phi.mean(axis=1)

    def metrics(self, lams: Sequence[float] = (0.0, 1.0)) -> dict[str, float]:
        out = {f"cosp_{lam:g}": cosp(self.phibar, lam) for lam in lams}
        return {**out, "ssv": ssv(self.phibar), "noe": noe(self.phibar)}


def attribute(model, games: Game | Sequence[Game], *, estimator: str = "salama", deletion: str = "text",
              confidence: str = "probability", chunk_size: int | None = 16, progress: bool = False,
              prefix_buckets: int = 8, **options) -> Attribution | list[Attribution]:
    """Shapley values of the expressions of one game (or of each of several) with one of
    `shapley.ESTIMATORS` (SalaMA by default; `options` such as m, seed, permutations, samples go to
    the estimator). The coalitions every estimator asks for are gathered first (estimators are
    deterministic given their seed), then every distinct (game, coalition, problem) row is scored
    in one prefix trie (`deletion` and `prefix_buckets` as in `row_values`), and the
    estimators re-run on the memo tables."""
    if estimator not in shapley.ESTIMATORS:
        raise ArgumentError(f"estimator: expected one of {sorted(shapley.ESTIMATORS)}, found {estimator!r}")
    _check(deletion, confidence)
    single = isinstance(games, Game)
    games = [games] if single else list(games)
    wanted = []
    for game in games:
        asked = shapley.Memo(lambda masks, p=game.tokens.shape[0]: np.zeros((len(masks), p)))
        shapley.ESTIMATORS[estimator](asked, game.n, **options)
        wanted.append(np.stack([np.frombuffer(key, bool) for key in asked.table]))
    rows = [(np.tile(np.arange(game.tokens.shape[0]), len(masks)), np.repeat(masks, game.tokens.shape[0], axis=0))
            for game, masks in zip(games, wanted)]
    if deletion == "text":
        encoded = [row for game, (problems, masks) in zip(games, rows) for row in _deleted_rows(game, problems, masks)]
        values = _scored(model, _text_rows(encoded), confidence, chunk_size, progress, prefix_buckets)
    else:
        merged, offsets = merge_games(games)
        values = row_values(model, merged, np.concatenate([offset + p for offset, (p, _) in zip(offsets, rows)]),
                            np.concatenate([np.pad(m, ((0, 0), (0, merged.n - m.shape[1]))) for _, m in rows]),
                            deletion="tokens", confidence=confidence, chunk_size=chunk_size, progress=progress,
                            prefix_buckets=prefix_buckets)
    results, start = [], 0
    for game, masks in zip(games, wanted):
        count = game.tokens.shape[0]
        table = values[start:start + len(masks) * count].reshape(len(masks), count)
        start += len(masks) * count
        memo = shapley.Memo(None, {m.tobytes(): v for m, v in zip(masks, table)})
        results.append(Attribution(phi=shapley.ESTIMATORS[estimator](memo, game.n, **options), evaluations=len(masks)))
    return results[0] if single else results
