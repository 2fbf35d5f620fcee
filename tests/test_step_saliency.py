"""Step-Saliency: segmentation by character offsets, saliency equal to per-site gradients, diagnostics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.methods import step_saliency as ss
from jaxinterp.methods.reasoning_segments import SplitRules, split_trace, token_steps
from jaxinterp.models import init_params
from jaxinterp.models.llama import LlamaConfig


@pytest.fixture(scope="module")
def tiny():
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4,
                         num_kv_heads=2, head_dim=8)
    return ji.Model(config, init_params(config, jax.random.key(0)))


def test_split_trace_follows_the_code_rules_and_keeps_exact_spans():
    trace = split_trace("What is 3 + 4 times 2?",
                        "First add three and four to get 7. Then multiply 7 by 2 to get 14. 14. | a | b | c |",
                        "So the final answer is 14.\n\nok")
    pieces = [(s.kind, trace.text[s.start:s.end]) for s in trace.steps]
    assert pieces == [
        ("question", "What is 3 + 4 times 2?"),
        ("thinking", "First add three and four to get 7."),
        ("thinking", "Then multiply 7 by 2 to get 14."),  # "14." (a bare number) and the table row are dropped
        ("summary", "So the final answer is 14."),  # "ok" is shorter than 10 characters
    ]
    loose = split_trace("q?", "tiny. steps here", "", rules=SplitRules(min_thinking_chars=1))
    assert [loose.text[s.start:s.end] for s in loose.steps] == ["q?", "tiny.", "steps here"]


def test_token_steps_maps_character_offsets():
    steps = split_trace("ab", "x" * 20, "y" * 12, template="Q {question} T {thinking} S {summary}").steps
    # tokens: "Q ", "ab", " T ", 10 x's, 10 x's, " S", "yyyyyyyyyyyy", and an empty-span special token
    offsets = [(0, 2), (2, 4), (4, 7), (7, 17), (17, 27), (27, 30), (30, 42), (42, 42)]
    assert token_steps(offsets, steps).tolist() == [-1, 0, -1, 1, 1, -1, 2, -1]


@pytest.mark.parametrize("rule,layers_per_pass", [("ag", 1), ("ag_signed", 2), ("g", 3)])
def test_token_level_maps_equal_the_gradient_at_each_probs_site(tiny, rule, layers_per_pass):
    """Whether the blocks are backpropagated one, two or all three at a time."""
    tokens = np.random.default_rng(0).integers(0, 50, (1, 10)).astype(np.int32)
    loss, maps = ss.step_maps(tiny, tokens, np.arange(10), rule=rule, layers_per_pass=layers_per_pass)
    assert maps.shape == (3, 1, 10, 10)
    objective = lambda run: ss.objective_value(run.logits, run.batch, "loss", None)  # noqa: E731
    for layer in range(3):
        site = f"blocks.{layer}.attn.probs"
        value, grads = tiny.grad(objective, tokens, wrt=[site])
        probs = tiny.run(tokens, capture=[site])[site]
        expected = ss.token_saliency(probs, grads[site], rule).mean(axis=1)
        np.testing.assert_allclose(maps[layer], expected, atol=1e-7)
        np.testing.assert_allclose(loss, value, rtol=1e-6)
    assert float(jnp.abs(maps).max()) > 0


def test_step_pooling_is_the_block_mean_and_skips_unassigned_tokens(tiny):
    tokens = np.random.default_rng(1).integers(0, 50, (1, 8)).astype(np.int32)
    steps = np.array([-1, 0, 0, 1, 1, 1, 2, -1])
    _, token_maps = ss.step_maps(tiny, tokens, np.arange(8), objective="logit", target=[[6, 3]])
    _, step_maps = ss.step_maps(tiny, tokens, steps, objective="logit", target=[[6, 3]], layers=[1, 2], layers_per_pass=1)
    token_maps = token_maps[1:]
    blocks = [np.flatnonzero(steps == i) for i in range(3)]
    expected = np.array([[[np.asarray(m[0])[np.ix_(r, c)].mean() for c in blocks] for r in blocks] for m in token_maps])
    np.testing.assert_allclose(step_maps[:, 0], expected, rtol=1e-5, atol=1e-9)


def test_diagnostics_on_a_hand_built_map():
    kinds = ("question", "thinking", "thinking", "thinking", "summary")
    m = np.zeros((5, 5))
    m[np.arange(5), np.arange(5)] = 1.0  # every step attends only to itself
    m[4, 0] = 1.0  # the summary also reads the question
    m[1:4, 1:4] += 0.5 * np.tril(np.ones((3, 3)))
    assert ss.block_intensity(m, kinds, "summary", "summary") == 1.0
    assert ss.final_heat_anomaly(m, kinds) == pytest.approx(1.0 / np.mean(m[1:4, 1:4]))
    assert ss.final_heat_anomaly(np.zeros((5, 5)), kinds) == 0.0
    maps = m[None]
    # summary row: self 1 + question 1; with recent=2 the last two thinking steps count (both 0 here)
    assert ss.deep_decay(maps, kinds, [0]) == pytest.approx(0.5)
    # rows 1..4, own step and the one before: row1 1.5/1.5, row2 2/2, row3 (0.5+1.5)/2.5, row4 1/2
    assert ss.shallow_lock_in(maps, kinds, [0]) == pytest.approx(np.mean([1.0, 1.0, 0.8, 0.5]))
    assert ss.shallow_layers(30) == tuple(range(7)) and ss.deep_layers(30) == tuple(range(23, 30))


def test_bad_arguments_name_what_was_expected(tiny):
    tokens = np.zeros((1, 4), np.int32)
    with pytest.raises(ji.ArgumentError, match="rule"):
        ss.step_maps(tiny, tokens, np.arange(4), rule="grad")
    with pytest.raises(ji.ArgumentError, match="target"):
        ss.step_maps(tiny, tokens, np.arange(4), objective="logit")


@pytest.mark.parametrize("objective", ["loss", "logit"])
def test_a_rows_map_does_not_depend_on_the_rows_sharing_its_batch(tiny, objective):
    """Rows of lengths 11 and 7 (right-padded) batched give each row's maps and L computed alone."""
    rng = np.random.default_rng(2)
    rows = [rng.integers(0, 50, 11).tolist(), rng.integers(0, 50, 7).tolist()]
    steps = [np.array([0] * 3 + [1] * 4 + [2] * 4), np.array([0, 0, 1, 1, 2, 2, 2])]
    targets = [[9, 4], [5, 7]]
    kwargs = lambda i: {"target": [targets[i]]} if objective == "logit" else {}  # noqa: E731
    padded_steps = np.stack([np.pad(s, (0, 11 - len(s)), constant_values=-1) for s in steps])
    batch_kwargs = {"target": targets} if objective == "logit" else {}
    loss, maps = ss.step_maps(tiny, tiny.pack(rows), padded_steps, objective=objective, layers_per_pass=2, **batch_kwargs)
    assert loss.shape == (2,)
    for i, row in enumerate(rows):
        alone_loss, alone = ss.step_maps(tiny, np.array([row], np.int32), steps[i], objective=objective,
                                         layers_per_pass=2, **kwargs(i))
        np.testing.assert_allclose(maps[:, i], alone[:, 0], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(loss[i], alone_loss[0], rtol=1e-6)
