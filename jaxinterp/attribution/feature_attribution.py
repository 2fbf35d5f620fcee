"""Perturbation attribution of prompt features to an answer: occlusion, Shapley, KernelSHAP, LIME.

    result = feature_attribution(model, "Paris is the capital of", " France", features="words",
                                 method="shapley", samples=32)
    result.values        # [n features]: contribution to log p(answer | prompt)
    result.stderr        # standard error of sampled methods (NaN where exact)

The prompt is cut into features (tokens, words, or user-given substrings; with `chat=True`
only the user's text inside the chat template). A coalition keeps some features and removes
the others, either by a `baseline` token in their place or by `delete`: the removed tokens
are masked out of attention and the remaining positions renumbered, which equals running
the shorter token sequence (no re-tokenisation of the joined text). The value of a coalition
is the target: the teacher-forced log-probability of an answer string (every answer token),
of the model's own greedy answer (`target=None`), or a user function of the logits at the
last prompt position.

Each coalition is a token row of the prompt's shape, scored by a prefix trie of KV caches
(`prefix_trie.PrefixTrie`): coalitions that agree on the leading features hold the same
tokens up to the next one, so the tokens before the first feature run once, and the rows are
cut at up to `prefix_buckets` further slots where they diverge (levels chosen to minimise the
slots computed), where every distinct prefix runs its segment once, continuing its parent's
cache. Levels are `sweep`s: a few compiled programs vmapped over the nodes in chunks fitted
to `memory_budget`; each distinct coalition is scored once (`shapley.Memo`). Estimators are those of
`methods/shapley.py`; occlusion (`ablation`) gives v(all) - v(all without i), as Captum's
`FeatureAblation`; `shapley` samples permutations (pass `orders` to fix them, e.g. the ones
Captum's `ShapleyValueSampling` draws).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.converters.chat_template import render_chat
from jaxinterp import prefix
from jaxinterp.errors import ArgumentError
from jaxinterp.methods import shapley
from jaxinterp.models import make_batch
from jaxinterp.prefix_trie import PrefixTrie
from jaxinterp.sweep import DEFAULT_BUDGET

Array = jax.Array
METHODS = ("ablation", "shapley", "exact", "kernel_shap", "lime", "salama")
REMOVALS = ("baseline", "delete")


@dataclasses.dataclass(frozen=True)
class FeatureAttribution:
    """Per-feature values of a perturbation method (see the module docstring).

    Attributes:
      features: the text of each feature; tokens: [n] tuple of the prompt token indices of each.
      values: [n] contribution of each feature to the target; stderr: [n] standard error
        (NaN for deterministic methods).
      full, empty: the target with every feature kept / removed (NaN for `delete` ablation,
        which never scores the empty coalition).
      method, removal: how the values were computed; evaluations: distinct coalitions scored.
      prompt_tokens: the token ids of the (rendered) prompt; answer_tokens: the answer's ids.
      shared_prefix: leading prompt tokens computed once for every coalition (see `share_prefix`).
      prefix_share: share of the scored coalitions' token slots served from the cached prompt
        instead of recomputed (0 without `share_prefix`).
    """

    features: tuple[str, ...]
    tokens: tuple[tuple[int, ...], ...]
    values: np.ndarray
    stderr: np.ndarray
    full: float
    empty: float
    method: str
    removal: str
    evaluations: int
    prompt_tokens: tuple[int, ...]
    answer_tokens: tuple[int, ...]
    shared_prefix: int = 0
    prefix_share: float = 0.0

    def token_values(self) -> np.ndarray:
        """[prompt length] each feature's value spread evenly over its tokens (0 outside features)."""
        out = np.zeros(len(self.prompt_tokens))
        for value, tokens in zip(self.values, self.tokens):
            out[list(tokens)] = value / len(tokens)
        return out

    def figure(self, tokenizer: Any, *, path: str | None = None) -> Any:
        """The prompt as a token strip coloured by `token_values` (written to `path` when given)."""
        from jaxinterp.viz.token_strip import token_strip

        shown = [tokenizer.decode([t]) for t in self.prompt_tokens]
        answer = tokenizer.decode(list(self.answer_tokens)) if self.answer_tokens else "the target"
        return token_strip(shown, self.token_values(), title=f"{self.method}: contribution to log p({answer!r})",
                           path=path)


def feature_attribution(
    model: Any,
    prompt: str,
    target: str | Callable[[Array], Array] | None,
    *,
    features: str | Sequence[str] = "words",
    method: str = "shapley",
    removal: str = "baseline",
    baseline: int | None = None,
    chat: bool = False,
    samples: int = 32,
    orders: np.ndarray | None = None,
    antithetic: bool = False,
    seed: int = 0,
    max_new_tokens: int = 16,
    share_prefix: bool = True,
    prefix_buckets: int = 8,
    memory_budget: int | str = DEFAULT_BUDGET,
    progress: bool = True,
) -> FeatureAttribution:
    """Attributes `target` to features of `prompt` by perturbation (see the module docstring).

    Args:
      model: a `jaxinterp.Model` with a fast tokenizer (character offsets locate features).
      prompt: the user's text.
      target: the answer string scored teacher-forced, None for the model's greedy answer
        (`max_new_tokens` at most), or `fn(logits [B, V]) -> [B]` of the last prompt position.
      features: `tokens`, `words` (whitespace-separated), or a list of substrings of `prompt`,
        found left to right.
      method: one of `METHODS`.
      removal: `baseline` (token `baseline`, default the pad token) or `delete`.
      chat: render the prompt as a user turn of the chat template; only the user's text is perturbed.
      samples: permutations (`shapley`), coalitions (`kernel_shap`, `lime`) or per-order subsets (`salama`).
      orders: explicit [P, n] permutations for `shapley` (overrides `samples` and `seed`).
      antithetic: pair each `shapley` permutation with its reverse.
      seed: seed of the sampled methods.
      share_prefix: run what coalitions share once, in a prefix trie of KV caches (False: every
        coalition recomputes the whole prompt; same values).
        A bidirectional model shares nothing (`prefix.shares_prefix`) and ignores it.
      prefix_buckets: at most this many levels of the prefix trie, one compiled program each (1:
        only the tokens before the first feature are shared).
      memory_budget: bytes (or "2GB") for one chunk of coalitions (see `sweep`).
    """
    if method not in METHODS:
        raise ArgumentError(f"method: expected one of {METHODS}, found {method!r}")
    if removal not in REMOVALS:
        raise ArgumentError(f"removal: expected one of {REMOVALS}, found {removal!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ArgumentError("prompt: expected a non-empty string")
    if not isinstance(samples, int) or samples < 2:
        raise ArgumentError(f"samples: expected an integer >= 2, found {samples!r}")
    prefix.check_buckets(prefix_buckets)
    ids, names, members = _features(model, prompt, features, chat)
    answer, score = _target(model, ids, target, max_new_tokens)
    feature_of = np.full(len(ids) + len(answer), -1, np.int32)
    for i, tokens in enumerate(members):
        feature_of[list(tokens)] = i
    fill = model.pad_token_id if baseline is None else baseline
    if not 0 <= fill < model.config.vocab_size:
        raise ArgumentError(f"baseline: expected a token id in [0, {model.config.vocab_size}), found {fill}")
    if removal == "delete" and method != "ablation" and np.all(feature_of[:len(ids)] >= 0):
        raise ArgumentError("removal: 'delete' leaves the empty coalition without any token; use removal='baseline' "
                            "or a prompt with tokens outside the features (a BOS token, a chat template)")
    trie = PrefixTrie(model, score, share=share_prefix and prefix.shares_prefix(model), levels=prefix_buckets,
                      memory_budget=memory_budget, progress=progress)
    perturbed = _perturbation(np.array(list(ids) + list(answer), np.int32), np.arange(len(ids), len(feature_of)),
                              feature_of, removal, fill)
    value = lambda masks: trie(perturbed(masks))  # noqa: E731
    memo = shapley.Memo(value)
    n = len(members)
    scores_empty = removal == "baseline" or method != "ablation"  # delete ablation never scores the empty one
    ends = np.array([[True] * n, [False] * n])[:2 if scores_empty else 1]
    memo.prefetch(ends)  # scored with the estimator's coalitions, in one trie
    values, stderr = _estimate(memo, n, method, samples, orders, antithetic, seed)
    ends = memo(ends) if scores_empty else np.array([memo(ends)[0], np.nan])
    return FeatureAttribution(
        features=tuple(names), tokens=tuple(members), values=np.asarray(values, np.float64),
        stderr=np.asarray(stderr, np.float64), full=float(ends[0]), empty=float(ends[1]), method=method,
        removal=removal, evaluations=memo.evaluations, prompt_tokens=tuple(ids), answer_tokens=tuple(answer),
        shared_prefix=trie.root, prefix_share=trie.share,
    )


def _features(model: Any, prompt: str, features: str | Sequence[str], chat: bool
              ) -> tuple[list[int], list[str], list[tuple[int, ...]]]:
    """(prompt token ids, feature texts, token indices of each feature)."""
    tokenizer = model.tokenizer
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise ArgumentError("model: feature attribution needs a fast tokenizer (character offsets locate features)")
    if chat:
        text = render_chat(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True,
                           source=model.source)
        start = text.rfind(prompt)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    else:
        text, start = prompt, 0
        encoded = tokenizer(text, return_offsets_mapping=True)
    if isinstance(features, str):
        if features not in ("tokens", "words"):
            raise ArgumentError(f"features: expected 'tokens', 'words' or a list of substrings, found {features!r}")
        if features == "words":
            spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", prompt)]
        else:
            spans = [(a - start, b - start) for a, b in encoded["offset_mapping"] if b > a and start <= a < start + len(prompt)]
    else:
        spans, cursor = [], 0
        for piece in features:
            at = prompt.find(piece, cursor) if isinstance(piece, str) and piece else -1
            if at < 0:
                raise ArgumentError(f"features: {piece!r} is not a substring of the prompt after character {cursor}")
            spans.append((at, at + len(piece)))
            cursor = at + len(piece)
    members = []
    for a, b in spans:
        inside = tuple(i for i, (x, y) in enumerate(encoded["offset_mapping"])
                       if y > x and x < start + b and y > start + a)
        if not inside:
            raise ArgumentError(f"features: {prompt[a:b]!r} covers no token of the prompt")
        members.append(inside)
    if not members:
        raise ArgumentError("features: the prompt has no feature to perturb")
    overlap = [t for i, m in enumerate(members) for t in m if any(t in other for other in members[i + 1:])]
    if overlap:
        raise ArgumentError(f"features: tokens {sorted(set(overlap))} belong to two features; choose wider features")
    return list(encoded["input_ids"]), [prompt[a:b] for a, b in spans], members


def _target(model: Any, ids: list[int], target: Any, max_new_tokens: int
            ) -> tuple[list[int], Callable[[Array, dict, Array], Array]]:
    """(answer token ids, score(logits [1, L, V], row, predictors [T]) -> scalar) for `prefix_trie.PrefixTrie`,
    where `predictors[j]` indexes the logits that predict slot j (of the last kept slot before it)."""
    length = len(ids)
    if callable(target):
        return [], lambda logits, row, predictors: target(logits[:, predictors[length]])[0]
    if target is None:
        answer = model.generate(make_batch(np.array([ids], np.int32)), max_new_tokens).tokens[0]
        if not answer:
            raise ArgumentError("target: the model's greedy answer is empty; pass the answer string instead")
    elif isinstance(target, str) and target:
        answer = model.tokenizer(target, add_special_tokens=False)["input_ids"]
    else:
        raise ArgumentError(f"target: expected an answer string, None or a function of the logits, found {target!r}")
    return list(answer), _answer_log_probability


def _answer_log_probability(logits: Array, row: dict, predictors: Array) -> Array:
    """log p(answer | prompt), teacher-forced over the row's `answer_slots` (one function for every call,
    so the trie's level programs are traced once)."""
    slots = row["answer_slots"]
    predicted = jax.nn.log_softmax(logits[0, predictors[slots]], axis=-1)  # the rows that predict the answer
    return jnp.take_along_axis(predicted, row["tokens"][slots, None], axis=-1).sum()


def _perturbation(tokens: np.ndarray, answer_slots: np.ndarray, feature_of: np.ndarray, removal: str, fill: int
                  ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """fn(coalitions [N, n] bool) -> the [N, T] rows (tokens, mask, positions; and [N, A] answer slots) of
    `tokens` [T] with the features outside each coalition removed: their tokens become `fill`, or are
    deleted (masked out, the kept positions renumbered, which equals running the shorter sequence)."""

    def perturbed(coalitions: np.ndarray) -> dict[str, np.ndarray]:
        coalitions = np.asarray(coalitions, bool)
        chex.assert_rank(coalitions, 2)
        kept = np.where(feature_of >= 0, coalitions[:, np.maximum(feature_of, 0)], True)  # [N, T]
        rows = np.broadcast_to(tokens, kept.shape)
        answer = {"answer_slots": np.broadcast_to(answer_slots, (len(kept), len(answer_slots)))}
        if removal == "baseline":
            return {"tokens": np.where(kept, rows, fill), "mask": np.ones_like(kept),
                    "positions": np.broadcast_to(np.arange(len(tokens)), kept.shape), **answer}
        return {"tokens": rows, "mask": kept, "positions": np.maximum(np.cumsum(kept, axis=1) - 1, 0), **answer}

    return perturbed


def _estimate(memo: shapley.Memo, n: int, method: str, samples: int, orders: np.ndarray | None, antithetic: bool,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, standard errors) of `method` over the memoised value function."""
    exact_error = np.full(n, np.nan)
    if method == "ablation":
        masks = np.ones((n + 1, n), bool)
        masks[np.arange(1, n + 1), np.arange(n)] = False
        v = memo(masks)
        return v[0] - v[1:], exact_error
    if method == "shapley":
        rng = np.random.default_rng(seed)
        orders = np.stack([rng.permutation(n) for _ in range(samples)]) if orders is None else orders
        return shapley.permutation_sampling(memo, n, orders, antithetic=antithetic)
    if method == "exact":
        return shapley.exact(memo, n), exact_error
    if method == "kernel_shap":
        return shapley.kernel_shap(memo, n, samples=samples, seed=seed), exact_error
    if method == "salama":
        return shapley.salama(memo, n, m=samples, seed=seed), exact_error
    return _lime(memo, n, samples, seed), exact_error


def _lime(value: Callable[[np.ndarray], np.ndarray], n: int, samples: int, seed: int, width: float = 1.0) -> np.ndarray:
    """LIME: a weighted linear fit of v on coalitions drawn uniformly (each feature kept with p = 1/2), weights
    exp(-d^2 / width^2) for the cosine distance d to the full prompt (Captum's default kernel); weighted least
    squares with an intercept where Captum defaults to a Lasso (no scikit-learn dependency here)."""
    rng = np.random.default_rng(seed)
    masks = np.concatenate([np.ones((1, n), bool), rng.random((samples, n)) < 0.5])
    y = value(masks)
    x = masks.astype(np.float64)
    cosine = x.sum(1) / (np.sqrt(np.maximum(x.sum(1), 1e-12)) * np.sqrt(n))
    weights = np.exp(-((1 - cosine) ** 2) / width**2)
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1) * np.sqrt(weights)[:, None]
    coefficients = np.linalg.lstsq(design, y * np.sqrt(weights), rcond=None)[0]
    return coefficients[:n]
