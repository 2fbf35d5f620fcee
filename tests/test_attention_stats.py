"""Attention statistics on hand-built patterns with known answers, and streaming against capture."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import attention as att
from jaxinterp.edits import PatternFromScores
from jaxinterp.methods.truncation import Truncate
from jaxinterp.models import segment_id
from tests.attention_fixtures import causal_visible, spanned_batch, tiny_decoder

T = 6
CAUSAL = np.tril(np.ones((T, T), bool))


def _rows(weights: np.ndarray) -> np.ndarray:
    """Causal rows normalised over the visible keys."""
    weights = np.where(CAUSAL, weights, 0.0)
    return weights / weights.sum(-1, keepdims=True)


UNIFORM = _rows(np.ones((T, T)))
ONE_HOT = np.eye(T)
LOCAL = _rows(np.where(np.eye(T, dtype=bool), np.exp(8.0), 1.0))  # ~one-hot on the diagonal, never underflowing
SINK = _rows(np.where(np.arange(T)[None] == 0, 50.0, 1.0))


def _heads(*patterns) -> jnp.ndarray:
    return jnp.asarray(np.stack(patterns)[None], jnp.float32)  # [1, H, T, T]


def _m_index_loops(probs: np.ndarray, eps: float = 1e-6) -> float:
    """The released code's formula, cell by cell: sum of folded A / (1 / (i + 1)) over T (T + 1) / 2."""
    total = 0.0
    for i in range(T):
        for j in range(i + 1):
            ratio = probs[i, j] * (i + 1)
            total += 1 / ratio if eps < ratio < 1 else ratio
    return total / (T * (T + 1) / 2)


def test_uniform_head_has_entropy_one_and_the_lowest_m_index_a_local_head_the_highest():
    probs = _heads(UNIFORM, LOCAL, SINK)
    visible = jnp.asarray(CAUSAL)[None]
    entropy = np.asarray(att.normalised_entropy(probs, visible))
    np.testing.assert_allclose(entropy[0], 1.0, atol=1e-6)
    assert entropy[1] < entropy[2] < entropy[0]
    m = np.asarray(att.m_index(probs, visible))[0]
    np.testing.assert_allclose(m[0], 1.0, atol=1e-6)
    assert m.argmin() == 0 and m.argmax() == 1
    np.testing.assert_allclose(m, [_m_index_loops(p) for p in (UNIFORM, LOCAL, SINK)], rtol=1e-5)


def test_exact_one_hot_scores_like_uniform_in_the_code_and_highest_when_clamped():
    probs, visible = _heads(UNIFORM, ONE_HOT), jnp.asarray(CAUSAL)[None]
    assert float(att.normalised_entropy(probs, visible)[1]) == pytest.approx(0.0, abs=1e-6)
    dropped = np.asarray(att.m_index(probs, visible))[0]
    np.testing.assert_allclose(dropped, [1.0, 1.0], atol=1e-6)  # the release's quirk (spec art.md step 2)
    clamped = np.asarray(att.m_index(probs, visible, below_eps="clamp"))[0]
    assert clamped[1] > 1e5 and clamped[0] == pytest.approx(1.0)


def test_single_row_m_index_uses_the_one_over_t_reference():
    row = np.array([0.5, 0.25, 0.25, 0.0])  # visible keys 0..2 only (the last slot is empty)
    probs = jnp.asarray(row, jnp.float32)[None, None, None]
    visible = jnp.asarray([True, True, True, False])[None, None]
    ratios = row[:3] * 3
    expected = sum(1 / r if r < 1 else r for r in ratios) / 3
    assert float(att.m_index(probs, visible)[0, 0]) == pytest.approx(expected, rel=1e-6)


def test_column_sink_is_detected_with_the_right_density():
    # a span of 4 tokens (columns 1..4) of a 6-token sequence; every row puts mass on columns 1 and 2
    weights = np.ones((T, T))
    weights[:, [1, 2]] = 50.0
    probs = _heads(_rows(weights), UNIFORM)
    keys = jnp.asarray([[False, True, True, True, True, False]])
    visible = jnp.asarray(CAUSAL)[None]
    scores = np.asarray(att.column_sink_scores(probs, visible, keys, keys))
    # paper form: sum over span query rows x != y, divided by n - 1 = 3
    by_hand = np.array([sum(np.asarray(probs)[0, 0, x, y] for x in range(1, 5) if x != y) / 3 for y in range(T)])
    np.testing.assert_allclose(scores[0, 0], np.where(np.asarray(keys[0]), by_hand, 0.0), rtol=1e-6)
    density = np.asarray(att.sink_density(jnp.asarray(scores), keys, beta=0.3))
    np.testing.assert_allclose(density[0], [0.5, 0.0])  # columns 1 and 2 of 4 are sinks, in head 0 only
    code = np.asarray(att.column_sink_scores(probs, visible, keys, keys, form="code"))
    later = np.asarray(probs)[0, 0, 2:, 1].sum() / (T - 1 - 1)  # column 1: rows 2..5, d_y = T - y - 1
    assert code[0, 0, 1] == pytest.approx(later, rel=1e-6)


def test_segment_mass_sums_attention_over_each_span():
    segments = jnp.asarray([[segment_id(s) for s in ("system", "image", "image", "question", "answer", "answer")]])
    probs = _heads(UNIFORM, SINK)
    mass = np.asarray(att.segment_mass(probs, segments, segments, queries=["answer"],
                                       keys=["system", "image", "question", "answer"]))[0, 0]
    mean = np.asarray(probs)[0].mean(0)
    expected = [mean[4:6][:, cols].sum(-1).mean() for cols in ([0], [1, 2], [3], [4, 5])]
    np.testing.assert_allclose(mass, expected, rtol=1e-6)
    assert mass.sum() == pytest.approx(1.0)
    assert np.isnan(np.asarray(att.segment_mass(probs, segments, segments, queries=["thinking"], keys=["image"]))).all()


def test_rollout_of_identity_attention_is_identity_and_chains_layers():
    identity = jnp.broadcast_to(jnp.eye(T), (1, 2, T, T))
    rollout = att.rollout_step(att.rollout_step(None, identity), identity)
    np.testing.assert_allclose(rollout[0], np.eye(T), atol=1e-7)
    uniform = _heads(UNIFORM, UNIFORM)
    mixed = 0.5 * np.eye(T) + 0.5 * UNIFORM
    two = np.asarray(att.rollout_step(att.rollout_step(None, uniform), uniform))[0]
    np.testing.assert_allclose(two, mixed @ mixed, atol=1e-6)
    np.testing.assert_allclose(two.sum(-1), 1.0, atol=1e-6)


@pytest.fixture(scope="module")
def model():
    return tiny_decoder()


def test_streamed_patterns_equal_the_captured_ones_under_edits(model):
    batch = spanned_batch(pad_first=2)
    edits = (PatternFromScores((1,), lambda s, ctx: jnp.exp(s - s.max(-1, keepdims=True)) ** 0.5
                               / jnp.sum(jnp.exp(s - s.max(-1, keepdims=True)) ** 0.5, -1, keepdims=True)),
             Truncate(start=2))
    run = model.run(batch, capture=["blocks.*.attn.probs"], edits=edits)
    patterns = list(att.layer_patterns(model, batch, edits=edits))
    assert [p.layer for p in patterns] == [0, 1, 2]
    for pattern in patterns:
        np.testing.assert_allclose(pattern.probs, run[f"blocks.{pattern.layer}.attn.probs"], atol=1e-6)
    image = np.asarray(batch.segments[0] == segment_id("image"))
    assert not np.asarray(patterns[2].visible)[0][:, :, image].any()  # truncated keys are not visible
    assert not np.asarray(patterns[0].visible)[0, :, :2].any()  # padding query rows are left out


def test_streamed_rollout_and_head_statistics_match_captured_probs(model):
    batch = spanned_batch()
    run = model.run(batch, capture=["blocks.*.attn.probs"])
    expected = None
    for layer in range(3):
        expected = att.rollout_step(expected, run[f"blocks.{layer}.attn.probs"])
    np.testing.assert_allclose(att.attention_rollout(model, batch), expected, atol=1e-6)
    stats = att.head_statistics(model, batch, layers=[0, 2])
    assert stats["entropy"].shape == stats["m_index"].shape == (2, 4)
    visible = causal_visible(batch)
    np.testing.assert_allclose(stats["entropy"][1], att.normalised_entropy(run["blocks.2.attn.probs"], visible),
                               atol=1e-6)
    np.testing.assert_allclose(stats["m_index"][0],
                               np.mean(att.m_index(run["blocks.0.attn.probs"], visible), axis=0), rtol=1e-5)


def test_bad_spans_and_layers_are_clear_errors(model):
    segments = jnp.zeros((1, T), jnp.int32)
    with pytest.raises(ji.ArgumentError, match=r"span: \[4, 9\) lies outside the sequence of 6 tokens"):
        att.span_mask((4, 9), segments)
    with pytest.raises(ji.ArgumentError, match="expected a segment name"):
        att.span_mask("picture", segments)
    np.testing.assert_array_equal(att.span_mask((1, 3), segments)[0], [0, 1, 1, 0, 0, 0])
    with pytest.raises(ji.ArgumentError, match=r"layers: expected layer indices in \[0, 3\), found \[3\]"):
        next(att.layer_patterns(model, spanned_batch(), layers=[3]))
