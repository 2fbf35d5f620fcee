"""Perturbation attribution of prompt features: known answers, deletion = a shorter sequence, and Captum parity."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.attribution.feature_attribution import feature_attribution
from jaxinterp.data.vocab import word_tokenizer
from jaxinterp.errors import ArgumentError
from jaxinterp.models import init_params
from jaxinterp.models.llama import LlamaConfig

WORDS = "the cat sat on a mat and dog ran to red blue house".split()
PROMPT, ANSWER = "the cat sat on a mat", " and dog ran"


@functools.lru_cache(maxsize=None)
def _model() -> ji.Model:
    tokenizer = word_tokenizer(WORDS)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8)
    params = jax.tree.map(lambda x: x * 3 if x.ndim > 1 else x, init_params(config, jax.random.key(0)))
    return ji.Model(config, params, tokenizer)


def _log_probability(model: ji.Model, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """log p(answer | prompt) from one plain forward (the reference every coalition must match)."""
    logits = np.asarray(model(np.array([prompt_ids + answer_ids], np.int32)), np.float64)[0]
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(sum(log_probs[len(prompt_ids) - 1 + i, token] for i, token in enumerate(answer_ids)))


@pytest.mark.parametrize("removal", ["baseline", "delete"])
def test_ablation_equals_explicit_forwards(removal):
    model = _model()
    result = feature_attribution(model, PROMPT, ANSWER, method="ablation", removal=removal, progress=False)
    ids, answer = list(result.prompt_tokens), list(result.answer_tokens)
    full = _log_probability(model, ids, answer)
    for value, tokens in zip(result.values, result.tokens):
        if removal == "baseline":
            perturbed = [model.pad_token_id if i in tokens else t for i, t in enumerate(ids)]
        else:  # deletion: the shorter sequence itself
            perturbed = [t for i, t in enumerate(ids) if i not in tokens]
        np.testing.assert_allclose(value, full - _log_probability(model, perturbed, answer), rtol=1e-4, atol=1e-5)
    assert np.abs(result.values).max() > 0.05


@pytest.mark.parametrize("method", ["exact", "shapley", "kernel_shap", "salama"])
def test_shapley_estimators_are_efficient(method):
    result = feature_attribution(_model(), PROMPT, ANSWER, method=method, samples=16, progress=False)
    np.testing.assert_allclose(result.values.sum(), result.full - result.empty, rtol=1e-5, atol=1e-5)


def test_sampled_shapley_converges_to_exact_with_a_standard_error():
    exact = feature_attribution(_model(), PROMPT, ANSWER, method="exact", progress=False).values
    sampled = feature_attribution(_model(), PROMPT, ANSWER, method="shapley", samples=200, antithetic=True,
                                  progress=False)
    assert np.all(sampled.stderr > 0)
    assert np.all(np.abs(sampled.values - exact) <= 4 * sampled.stderr + 1e-6)
    assert np.all(np.isnan(feature_attribution(_model(), PROMPT, ANSWER, method="exact", progress=False).stderr))


def test_identical_coalitions_are_scored_once_and_features_are_located():
    result = feature_attribution(_model(), PROMPT, ANSWER, features=["the cat", "on a mat"], method="exact",
                                 progress=False)
    assert result.features == ("the cat", "on a mat")
    assert result.evaluations == 4  # 2 features: 4 distinct coalitions, whatever the estimator asked
    assert [len(t) for t in result.tokens] == [2, 3]
    token_values = result.token_values()
    np.testing.assert_allclose(token_values.sum(), result.values.sum())


def test_figure_is_a_token_strip(tmp_path):
    result = feature_attribution(_model(), PROMPT, ANSWER, method="ablation", progress=False)
    result.figure(_model().tokenizer, path=tmp_path / "strip.png")
    assert (tmp_path / "strip.png").stat().st_size > 1000


def test_html_report_lists_every_feature_with_its_value(tmp_path):
    """The report holds one row per feature with its value and standard error, the prompt's tokens
    escaped in the strip, and the content security policy of every report."""
    from jaxinterp.viz import feature_report

    model = _model()
    sampled = feature_attribution(model, PROMPT, ANSWER, method="shapley", samples=4, progress=False)
    exact = feature_attribution(model, PROMPT, ANSWER, method="exact", progress=False)
    for result in (sampled, exact):
        page = open(feature_report(tmp_path / "features.html", result, model,
                                   notes={"<question>": "a & b"})).read()
        rows = page.split("<th>standard error</th></tr>")[1].split("</table>")[0].split("<tr>")[1:]
        assert len(rows) == len(result.features)
        for row, word, value, err in zip(rows, result.features, result.values, result.stderr):
            assert f"<td>{word}</td><td>{value:+.4g}</td>" in row
            assert ("exact" if np.isnan(err) else f"{err:.3g}") in row
        assert "&lt;question&gt;" in page and "a &amp; b" in page and "Content-Security-Policy" in page
        assert page.count('class="tok') == len(result.prompt_tokens)
    assert not np.isnan(sampled.stderr).any() and np.isnan(exact.stderr).all()


def test_chat_perturbs_only_the_user_text():
    model = _model()
    result = feature_attribution(model, PROMPT, ANSWER, chat=True, method="ablation", progress=False)
    assert result.features == tuple(PROMPT.split())
    rendered = model.tokenizer.convert_ids_to_tokens(list(result.prompt_tokens))
    assert [rendered[t[0]] for t in result.tokens] == PROMPT.split()
    assert len(result.prompt_tokens) > len(PROMPT.split()) + 2  # template tokens around the user's text


def test_function_target_and_greedy_target():
    model = _model()
    top = lambda logits: jax.nn.log_softmax(logits)[:, 5]  # noqa: E731
    assert feature_attribution(model, PROMPT, top, method="ablation", progress=False).values.shape == (6,)
    greedy = feature_attribution(model, PROMPT, None, method="ablation", max_new_tokens=3, progress=False)
    assert len(greedy.answer_tokens) == 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="occlusion"), "method: expected one of"),
    (dict(removal="zero"), "removal: expected one of"),
    (dict(features=["dog"]), "is not a substring of the prompt"),
    (dict(features="sentences"), "features: expected 'tokens', 'words'"),
    (dict(baseline=10_000), "baseline: expected a token id"),
    (dict(samples=1), "samples: expected an integer >= 2"),
    (dict(prefix_buckets=0), "prefix_buckets: expected an integer >= 1"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ArgumentError, match=message):
        feature_attribution(_model(), PROMPT, ANSWER, progress=False, **kwargs)


# -- Captum parity -------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _torch_pair():
    """(transformers tiny Llama, the same weights in jaxinterp, the word tokenizer) for Captum."""
    from tests import hf_tiny

    tokenizer = word_tokenizer(WORDS)
    reference = hf_tiny.build("smol")
    return reference, ji.load(reference, progress=False), tokenizer


def test_bidirectional_model_shares_no_prefix():
    """Early slots of a bidirectional model see the removed features, so no cached prefix is valid."""
    model = _model()
    bidirectional = ji.Model(dataclasses.replace(model.config, causal=False), model.params, model.tokenizer)
    kwargs = dict(features=["cat", "sat on", "a", "mat"], chat=True, method="exact", progress=False)
    asked = feature_attribution(bidirectional, PROMPT, ANSWER, **kwargs)
    full = feature_attribution(bidirectional, PROMPT, ANSWER, share_prefix=False, **kwargs)
    assert asked.shared_prefix == 0 and asked.prefix_share == 0
    np.testing.assert_allclose(asked.values, full.values, rtol=1e-6, atol=1e-6)
    causal = feature_attribution(model, PROMPT, ANSWER, **kwargs)  # the same weights read causally differ
    assert np.abs(causal.values - full.values).max() > 1e-3


@pytest.mark.parametrize("method", ["ablation", "shapley"])
def test_captum_llm_attribution_agrees(method):
    """Captum 0.9 with `use_cached_outputs=False`: its cached decode (the default) scored other values than
    its own uncached forward with transformers 5.25 (checked: the uncached one equals a plain forward)."""
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")
    reference, model, tokenizer = _torch_pair()
    model = ji.Model(model.config, model.params, tokenizer)
    # not the pad token: Captum's forward masks pad tokens out of attention (HF's pad-derived mask),
    # which turns a pad baseline into a deletion
    baseline = tokenizer.unk_token_id
    inputs = captum_attr.TextTokenInput(PROMPT, tokenizer, baselines=baseline)
    if method == "ablation":
        explainer = captum_attr.LLMAttribution(captum_attr.FeatureAblation(reference), tokenizer)
        theirs = explainer.attribute(inputs, target=ANSWER.strip(), use_cached_outputs=False).seq_attr
        ours = feature_attribution(model, PROMPT, ANSWER, features="tokens", method="ablation", baseline=baseline,
                                   progress=False)
    else:
        permutations = 6
        torch.manual_seed(0)
        explainer = captum_attr.LLMAttribution(captum_attr.ShapleyValueSampling(reference), tokenizer)
        theirs = explainer.attribute(inputs, target=ANSWER.strip(), n_samples=permutations,
                                     use_cached_outputs=False).seq_attr
        torch.manual_seed(0)  # Captum draws one torch.randperm per sample: replay them for ours
        orders = np.stack([torch.randperm(len(PROMPT.split())).numpy() for _ in range(permutations)])
        ours = feature_attribution(model, PROMPT, ANSWER, features="tokens", method="shapley", baseline=baseline,
                                   orders=orders, progress=False)
    np.testing.assert_allclose(ours.values, theirs.detach().numpy().astype(np.float64), rtol=1e-4, atol=1e-5)
    assert np.abs(ours.values).max() > 1e-3


@pytest.mark.parametrize("removal", ["baseline", "delete"])
@pytest.mark.parametrize("buckets", [1, 2, 4])
def test_shared_prefix_equals_full_recompute(removal, buckets):
    """With chat=True the template's leading tokens run once into a KV cache, and each coalition continues
    the cached prompt from its bucket's start (its first removed feature or before); values equal
    recomputing every coalition whole, and more buckets serve more slots from the cache."""
    kwargs = dict(features=["cat", "sat on", "a", "mat"], chat=True, method="exact", removal=removal, progress=False)
    shared = feature_attribution(_model(), PROMPT, ANSWER, prefix_buckets=buckets, **kwargs)
    full = feature_attribution(_model(), PROMPT, ANSWER, share_prefix=False, **kwargs)
    assert shared.shared_prefix > 2 and full.shared_prefix == 0 and full.prefix_share == 0
    np.testing.assert_allclose(shared.values, full.values, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([shared.full, shared.empty], [full.full, full.empty], rtol=1e-5, atol=1e-5)
    # 16 coalitions of a prompt of L slots, one call: one bucket computes the template's tokens once and
    # serves them to the other 15
    length = len(shared.prompt_tokens) + len(shared.answer_tokens)
    only_template = shared.shared_prefix / length * (shared.evaluations - 1) / shared.evaluations
    assert shared.prefix_share == pytest.approx(only_template) if buckets == 1 else shared.prefix_share > only_template


@pytest.mark.parametrize("features, removal, leading", [("tokens", "baseline", 0),
                                                          (["cat", "sat", "on", "a", "mat"], "delete", 1)])
def test_prefix_trie_without_a_leading_template(features, removal, leading):
    """No template (no BOS in this tokenizer). Features from the first token on: the first bucket has
    no cache to read and runs whole, the later ones continue the cached prompt. Deleting every
    feature after a bucket's start makes the cached logits of the slot before it predict the answer."""
    kwargs = dict(features=features, removal=removal, method="exact", progress=False)
    shared = feature_attribution(_model(), PROMPT, ANSWER, prefix_buckets=3, **kwargs)
    full = feature_attribution(_model(), PROMPT, ANSWER, share_prefix=False, **kwargs)
    assert shared.shared_prefix == leading and shared.prefix_share > 0
    np.testing.assert_allclose(shared.values, full.values, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # about 80 s; the tiny-Llama parity above runs by default
@pytest.mark.parametrize("method", ["ablation", "shapley"])
def test_captum_agrees_on_smollm2(smollm2, smollm2_reference, method):
    """The pretrained model against transformers' PyTorch model from the same GGUF file: same token
    features, baseline token, answer ids and (for Shapley) the permutations Captum draws: the issue's
    1e-4 relative (measured: 1.9e-5 absolute, 1.8e-5 relative, from float32 rounding over 30 layers)."""
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")
    prompt, answer = "The capital of France is", " Paris"
    tokenizer = smollm2.tokenizer
    baseline = tokenizer.convert_tokens_to_ids("_")
    answer_ids = torch.tensor(tokenizer(answer, add_special_tokens=False)["input_ids"])
    inputs = captum_attr.TextTokenInput(prompt, tokenizer, baselines=baseline)
    algorithm = captum_attr.FeatureAblation if method == "ablation" else captum_attr.ShapleyValueSampling
    explainer = captum_attr.LLMAttribution(algorithm(smollm2_reference), tokenizer)
    permutations = 4
    torch.manual_seed(0)
    extra = {} if method == "ablation" else {"n_samples": permutations}
    theirs = explainer.attribute(inputs, target=answer_ids, use_cached_outputs=False, **extra).seq_attr
    orders = None
    if method == "shapley":
        torch.manual_seed(0)  # replay Captum's torch.randperm draws
        orders = np.stack([torch.randperm(len(inputs.values)).numpy() for _ in range(permutations)])
    ours = feature_attribution(smollm2, prompt, answer, features="tokens", method=method, baseline=baseline,
                               orders=orders, progress=False)
    theirs = theirs.detach().numpy().astype(np.float64)
    assert ours.values.shape == theirs.shape
    np.testing.assert_allclose(ours.values, theirs, rtol=1e-4, atol=5e-5)
    assert np.abs(ours.values).max() > 0.1


@pytest.mark.parametrize("removal", ["baseline", "delete"])
def test_deep_trie_equals_full_recompute_and_beats_a_depth_one_trie(removal):
    """Sampled Shapley over phrase features: every coalition continues its deepest shared ancestor in the
    trie, so values equal recomputing each coalition whole, far more slots are served than continuing
    the unperturbed prompt from the first removed feature would serve, and a memory budget of one
    coalition's caches (no sharing between coalitions beyond the root) changes nothing."""
    prompt = "the cat sat on a mat and the dog ran to a red house and the cat ran to a blue mat"
    parts = ["the cat sat", "on a mat", "and the dog ran", "to a red house", "and the cat ran", "to a", "blue"]
    kwargs = dict(features=parts, chat=True, method="shapley", samples=6, removal=removal, progress=False)
    trie = feature_attribution(_model(), prompt, ANSWER, prefix_buckets=8, **kwargs)
    full = feature_attribution(_model(), prompt, ANSWER, share_prefix=False, **kwargs)
    np.testing.assert_allclose(trie.values, full.values, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([trie.full, trie.empty], [full.full, full.empty], rtol=1e-5, atol=1e-5)
    rng = np.random.default_rng(0)  # the coalitions `shapley` scores (seed 0), for the depth-one share
    n = len(trie.features)
    coalitions = {(np.arange(n)[:, None] != order[None, : k + 1]).all(1).tobytes() for order in
                  (rng.permutation(n) for _ in range(6)) for k in range(-1, n)}
    firsts = np.array([t[0] for t in trie.tokens])
    length = len(trie.prompt_tokens) + len(trie.answer_tokens)
    depth_one = np.mean([firsts[~np.frombuffer(c, bool)].min(initial=length) for c in coalitions]) / length
    print(trie.prefix_share, depth_one)
    assert trie.prefix_share > depth_one + 0.1
    tight = feature_attribution(_model(), prompt, ANSWER, prefix_buckets=8, memory_budget=1, **kwargs)
    np.testing.assert_allclose(tight.values, trie.values, rtol=1e-5, atol=1e-5)
    assert tight.prefix_share < trie.prefix_share


def test_a_second_call_traces_nothing(monkeypatch):
    """The trie's level programs take the model as an input and come from one cached factory, so `sweep`
    keeps their traces: attributing again (same prompt shape, new answer) traces no program at all, and
    a function that closes over arrays (the user's target here) is traced again rather than kept."""
    kwargs = dict(features="tokens", method="shapley", samples=4, progress=False)
    feature_attribution(_model(), PROMPT, ANSWER, **kwargs)
    traced = []
    make_jaxpr = jax.make_jaxpr
    monkeypatch.setattr(jax, "make_jaxpr", lambda *args, **options: traced.append(args[0]) or make_jaxpr(*args, **options))
    again = feature_attribution(_model(), PROMPT, ANSWER, **kwargs)
    assert traced == [] and again.evaluations > 2
    direction = jnp.arange(_model().config.vocab_size, dtype=jnp.float32)
    for _ in range(2):
        feature_attribution(_model(), PROMPT, lambda logits: logits @ direction, **kwargs)
    assert len(traced) >= 2
