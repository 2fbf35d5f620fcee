"""SalaMAnder: estimators on games with known Shapley values, expressions, batched coalition values, CoSP."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.methods import salamander as sl
from jaxinterp.methods import shapley
from jaxinterp.models import init_params
from jaxinterp.models.llama import LlamaConfig
from jaxinterp.prefix_trie import PrefixTrie

WEIGHTS = np.array([1.0, 2.0, -3.0, 0.5])


def additive(masks):
    return masks.astype(float) @ WEIGHTS


def interacting(masks):
    # players 0 and 1 earn 3 only together; player 2 adds 1 alone
    return 3.0 * (masks[:, 0] & masks[:, 1]) + 1.0 * masks[:, 2]


def glove(masks):
    # left gloves {0, 1}, right glove {2}: a pair is worth 1
    return np.minimum(masks[:, :2].sum(1), masks[:, 2:].sum(1)).astype(float)


GAMES = [(additive, 4, WEIGHTS), (interacting, 3, np.array([1.5, 1.5, 1.0])), (glove, 3, np.array([1, 1, 4]) / 6)]


@pytest.mark.parametrize("game,n,expected", GAMES)
def test_exact_and_full_salama_recover_known_shapley_values(game, n, expected):
    np.testing.assert_allclose(shapley.exact(game, n), expected, atol=1e-12)
    full = max(math.comb(n - 1, r - 1) for r in range(1, n + 1))
    np.testing.assert_allclose(shapley.salama(game, n, m=full, seed=3), expected, atol=1e-12)


@pytest.mark.parametrize("game,n,expected", GAMES)
def test_every_estimator_keeps_efficiency(game, n, expected):
    total = game(np.ones((1, n), bool))[0] - game(np.zeros((1, n), bool))[0]
    for name, options in (("permutation", {"permutations": 30}), ("kernel_shap", {"samples": 40})):
        assert shapley.ESTIMATORS[name](game, n, **options).sum() == pytest.approx(total)


def _random_game(n=8, seed=0):
    table = np.random.default_rng(seed).normal(size=2**n)
    return lambda masks: table[(masks * (1 << np.arange(n))).sum(1)]


def test_sampled_estimators_converge():
    game = _random_game()
    truth = shapley.exact(game, 8)
    np.testing.assert_allclose(shapley.salama(game, 8, m=35), truth, atol=1e-12)  # C(7, 3) = 35 covers every stratum
    for name, key, few, many in (("salama", "m", 2, 20), ("permutation", "permutations", 10, 2000),
                                 ("kernel_shap", "samples", 40, 8000)):
        errors = [np.abs(shapley.ESTIMATORS[name](game, 8, seed=0, **{key: k}) - truth).mean() for k in (few, many)]
        assert errors[1] < 0.25 * errors[0], (name, errors)


def _counting_memo() -> tuple[shapley.Memo, list[int]]:
    """A memo of the additive game and the list of batch sizes its value function was called with."""
    calls = []

    def value(masks):
        calls.append(len(masks))
        return additive(masks)

    return shapley.Memo(value), calls


def test_memo_scores_each_distinct_coalition_once_in_one_batch():
    memo, calls = _counting_memo()
    shapley.salama(memo, 4, m=3)
    assert memo.evaluations == 16 and calls == [16]  # all 2^4 coalitions, each once, in one call
    shapley.exact(memo, 4)
    assert calls == [16]  # nothing new to score


def test_prefetched_coalitions_join_the_next_batch_only():
    memo, calls = _counting_memo()
    ends = np.array([[True] * 4, [False] * 4])
    memo.prefetch(ends)
    assert calls == [] and memo.evaluations == 0  # nothing is scored before it is asked for
    memo(np.eye(4, dtype=bool))
    assert calls == [6] and memo.evaluations == 6  # the four singletons, with both ends in the same batch
    np.testing.assert_allclose(memo(ends), additive(ends))
    assert calls == [6]


def test_vector_valued_games_give_one_attribution_per_problem():
    both = lambda masks: np.stack([additive(masks), 2 * additive(masks)], axis=1)  # noqa: E731
    np.testing.assert_allclose(shapley.exact(both, 4), np.stack([WEIGHTS, 2 * WEIGHTS], 1), atol=1e-12)


def test_find_expressions_in_gsm8k_and_plain_style():
    text = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May. In total 48+24 = <<48+24=72>>72 clips. "
            "Then 5 + 9 = 14. So ( 14 - 2 ) * 3 = 36, and 7 alone is no expression.")
    found = [text[a:b] for a, b in sl.find_expressions(text)]
    assert found == ["48/2 = <<48/2=24>>24", "48+24 = <<48+24=72>>72", "5 + 9 = 14", "( 14 - 2 ) * 3 = 36"]
    spans = sl.find_expressions(text)
    assert "5 + 9 = 14" not in sl.coalition_text(text, spans, [True, True, False, True])


def test_metrics():
    phibar = np.array([0.2, -0.1, 0.0, 0.5])
    assert sl.cosp(phibar, 0.0) == 2 and sl.cosp(phibar, 1.0) == 0 and sl.cosp(phibar, 0.5) == 1
    assert sl.ssv(phibar) == pytest.approx(0.6) and sl.noe(phibar) == 4
    assert sl.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(np.corrcoef([1, 2, 3], [2, 4, 7])[0, 1])


class CharTokenizer:
    """One token per character (ids = code points mod 64), with offsets, like a fast tokenizer."""

    def __call__(self, text, return_offsets_mapping=False, add_special_tokens=False):
        out = {"input_ids": [ord(c) % 64 for c in text]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out


def test_answer_value_on_hand_built_logits():
    logits = np.full((4, 5), -2.0, np.float32)
    logits[1, 3], logits[2, 4] = 2.0, 1.0  # positions 1 and 2 predict tokens 3 and 4
    positions, mask = np.array([2, 3]), np.array([True, True])
    log_p = [2.0 - np.log(np.exp(2.0) + 4 * np.exp(-2.0)), 1.0 - np.log(np.exp(1.0) + 4 * np.exp(-2.0))]
    assert sl.answer_value(logits, positions, np.array([3, 4]), mask, "log_prob") == pytest.approx(np.mean(log_p), rel=1e-5)
    assert sl.answer_value(logits, positions, np.array([3, 4]), mask, "probability") == pytest.approx(np.mean(np.exp(log_p)), rel=1e-5)
    assert sl.answer_value(logits, positions, np.array([3, 4]), mask, "logit") == pytest.approx(1.5)
    assert sl.answer_value(logits, positions, np.array([3, 0]), mask, "logit") == 0.0  # greedy would not emit 0
    assert sl.answer_value(logits, positions, np.array([3, 0]), np.array([True, False]), "logit") == pytest.approx(2.0)


def test_masked_coalitions_equal_the_forward_of_the_deleted_text():
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8)
    model = ji.Model(config, init_params(config, jax.random.key(0)))
    tokenizer = CharTokenizer()
    demo = "Q: x\nA: 1 + 2 = 3. 3 * 2 = 6.\n"
    tests = [("y?", "7"), ("zz?", "12")]
    game, _ = sl.build_game(tokenizer, demo, tests)
    assert game.n == 2
    for keep in ([True, True], [False, True], [False, False]):
        text = sl.coalition_text(demo, sl.find_expressions(demo), keep)
        for p, (question, gold) in enumerate(tests):
            batch = sl.coalition_batch(game, p, np.array(keep))
            kept = np.asarray(batch.mask[0])
            ids = np.array([tokenizer(text + f"Q: {question}\nA: The answer is {gold}")["input_ids"]], np.int32)
            np.testing.assert_array_equal(np.asarray(batch.tokens[0])[kept], ids[0])
            np.testing.assert_allclose(np.asarray(model(batch)[0])[kept], np.asarray(model(ids)[0]), atol=1e-5)
    # several games attributed in one sweep give what each game's own exact enumeration gives; the gold
    # answers are the model's own greedy next tokens, so that some coalitions are correct (v != 0)
    games = []
    for text in (demo, "Q: w\nA: 4 - 1 = 3. 3 + 3 = 6. 6 - 2 = 4.\n"):
        prompts = [text + f"Q: {q}\nA: The answer is" for q, _ in tests]
        greedy = [chr(int(np.argmax(np.asarray(model(np.array([tokenizer(p)["input_ids"]], np.int32)))[0, -1])) + 64)
                  for p in prompts]
        games.append(sl.build_game(tokenizer, text, [(q, g) for (q, _), g in zip(tests, greedy)], answer="{answer}")[0])
    pooled = sl.attribute(model, games, estimator="exact", confidence="logit", chunk_size=4)
    for g, attribution in zip(games, pooled):
        memo = shapley.Memo(lambda m, g=g: sl.coalition_values(model, g, m, confidence="logit", chunk_size=4))
        np.testing.assert_allclose(attribution.phi, shapley.exact(memo, g.n), atol=1e-5)
        assert np.all(memo(np.ones((1, g.n), bool)) != 0)
        assert attribution.evaluations == 2**g.n
    assert [g.n for g in games] == [2, 3]


def test_text_deletion_equals_one_forward_per_retokenised_prompt(smollm2):
    """With a BPE tokenizer, masking an expression's tokens is not the deleted text (the tokenizer
    merges the characters at the cut differently); `deletion="text"` scores the text itself."""
    tokenizer = smollm2.tokenizer
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=8)
    model = ji.Model(config, init_params(config, jax.random.key(1)))
    demo = "Q: Sara has 2 pens and gets 3 more.\nA: 2 + 3 = 5. The answer is 5.\n\n"
    tests = [("Tom has 4 and gets 1.", "5"), ("Ann has 6 and gives 2.", "4")]
    game, _ = sl.build_game(tokenizer, demo, tests)
    masks = np.array([[True], [False]])
    by_text = sl.coalition_values(model, game, masks, deletion="text", confidence="logit", chunk_size=2)
    by_tokens = sl.coalition_values(model, game, masks, deletion="tokens", confidence="logit", chunk_size=2)
    for m, keep in enumerate(masks):
        for p, (question, gold) in enumerate(tests):
            prompt, text = game.source.prompt(p, keep)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            answer = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            logits = model(np.array([ids], np.int32))[0]
            positions = np.arange(answer, len(ids))
            expected = sl.answer_value(logits, positions, np.array(ids)[positions], np.ones(len(positions), bool),
                                       "logit")
            np.testing.assert_allclose(by_text[m, p], expected, atol=1e-5)
    np.testing.assert_allclose(by_text[0], by_tokens[0], atol=1e-5)  # nothing deleted: the same prompts
    kept = np.asarray(sl.coalition_batch(game, 0, masks[1]).mask[0])
    retokenised = tokenizer(game.source.prompt(0, masks[1])[1], add_special_tokens=False)["input_ids"]
    assert list(np.asarray(game.tokens[0])[kept]) != retokenised  # why `text` is the default
    with pytest.raises(ji.ArgumentError, match="deletion"):
        sl.coalition_values(model, game, masks, deletion="characters")


def test_text_rows_share_prefixes_in_the_trie(smollm2, monkeypatch):
    """Re-tokenised rows scored by the prefix trie (any number of levels) score what one forward per
    prompt scores; rows share the demonstration across test problems, so a deeper trie computes less."""
    model, tokenizer = smollm2, smollm2.tokenizer  # a real model: its answers are right, so the values are not 0
    demo = "Q: Sara has 2 pens and gets 3 more, then 4 more.\nA: 2 + 3 = 5. 5 + 4 = 9. The answer is 9.\n\n"
    tests = [("Sara has 2 pens and gets 3 more, then 4 more.", "9"), ("Tom has 2 pens and gets 3 more.", "5")]
    game, _ = sl.build_game(tokenizer, demo, tests)
    masks = np.array([[True, True], [True, False], [False, True], [False, False]])
    expected = np.zeros((len(masks), len(tests)))
    for m, keep in enumerate(masks):
        for p in range(len(tests)):
            prompt, text = game.source.prompt(p, keep)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            positions = np.arange(len(tokenizer(prompt, add_special_tokens=False)["input_ids"]), len(ids))
            expected[m, p] = sl.answer_value(model(np.array([ids], np.int32))[0], positions, np.array(ids)[positions],
                                             np.ones(len(positions), bool), "logit")
    assert np.count_nonzero(expected) >= 3  # the 135M model answers the repeated question
    tries = []
    monkeypatch.setattr(sl, "PrefixTrie", lambda *args, **kwargs: tries.append(PrefixTrie(*args, **kwargs)) or tries[-1])
    for buckets in (1, 2, 8):
        values = sl.coalition_values(model, game, masks, confidence="logit", chunk_size=3, prefix_buckets=buckets)
        np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-5)
    # the demonstration's opening runs once for all 8 rows, and deeper tries serve more of the rest
    assert all(trie.root > 10 for trie in tries)
    assert tries[0].share < tries[1].share <= tries[2].share
    with pytest.raises(ji.ArgumentError, match="prefix_buckets"):
        sl.coalition_values(model, game, masks, prefix_buckets=0)
