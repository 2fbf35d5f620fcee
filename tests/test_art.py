"""ART: head replacement by m-index rank, zero heads = plain model, cached = recomputed (prefill mode)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.attention import m_index
from jaxinterp.methods.art import ART, art, replace_heads
from jaxinterp.methods.recompute import greedy
from tests.attention_fixtures import causal_visible, spanned_batch, tiny_decoder

CAPTURE = ["blocks.*.attn.probs"]


@pytest.fixture(scope="module")
def model():
    return tiny_decoder()


def test_replace_heads_copies_the_top_head_or_the_mean_of_the_top_k():
    probs = jnp.arange(4, dtype=jnp.float32)[None, :, None, None] * jnp.ones((1, 4, 2, 2))  # head h holds h
    scores = jnp.array([[0.5, 3.0, 1.0, 2.0]])  # ranks: head 0 < 2 < 3 < 1
    repeat = np.asarray(replace_heads(probs, scores, 2))[0, :, 0, 0]
    np.testing.assert_array_equal(repeat, [1, 1, 1, 3])  # the two lowest (0, 2) take head 1
    mean = np.asarray(replace_heads(probs, scores, 2, mode="mean"))[0, :, 0, 0]
    np.testing.assert_array_equal(mean, [2, 1, 2, 3])  # ... the mean of heads 1 and 3
    np.testing.assert_array_equal(np.asarray(replace_heads(probs, scores, 0))[0, :, 0, 0], [0, 1, 2, 3])


def test_head_count_rounds_halves_to_even_as_the_release(model):
    """The release's k = round(H * TOPK_RATIO) is Python's round: 4 x 0.625 = 2.5 -> 2, 4 x 0.125 = 0.5 -> 0."""
    assert [int(art(model, top_k_ratio=r).heads) for r in (0.125, 0.375, 0.625, 0.875)] == [0, 2, 2, 4]


def test_zero_heads_leave_logits_unchanged(model):
    batch = spanned_batch()
    assert int(art(model, layers=(0, 1), top_k_ratio=0.1).heads) == 0  # round(4 x 0.1) = 0
    np.testing.assert_array_equal(model(batch, edits=art(model, layers=(0, 1), top_k_ratio=0.1)), model(batch))


def test_replaced_heads_hold_the_most_local_heads_pattern(model):
    batch = spanned_batch(pad_first=2)
    plain = model.run(batch, capture=CAPTURE)
    visible = causal_visible(batch)
    for layer in (0, 2):
        edited = model.run(batch, capture=CAPTURE, edits=art(model, layers=(layer,), top_k_ratio=0.5))
        before, after = plain[f"blocks.{layer}.attn.probs"], edited[f"blocks.{layer}.attn.probs"]
        m = np.asarray(m_index(before, visible))
        for row in range(2):
            order = np.argsort(m[row])
            real = np.asarray(batch.mask[row])
            for head in order[:2]:
                np.testing.assert_allclose(after[row, head][real], before[row, order[-1]][real], atol=1e-6)
            for head in order[2:]:
                np.testing.assert_allclose(after[row, head], before[row, head], atol=1e-6)
            np.testing.assert_array_equal(after[row, :, ~real], before[row, :, ~real])  # padding rows untouched
        assert not np.allclose(edited.logits, plain.logits)


def test_local_mode_overwrites_the_most_local_heads(model):
    batch = spanned_batch()
    plain = model.run(batch, capture=CAPTURE)["blocks.0.attn.probs"]
    after = model.run(batch, capture=CAPTURE, edits=art(model, top_k_ratio=0.25, overwrite="local"))["blocks.0.attn.probs"]
    m = np.asarray(m_index(plain, causal_visible(batch)))[0]
    np.testing.assert_allclose(after[0, m.argmax()], plain[0, m.argmin()], atol=1e-6)


def test_cached_generation_equals_recomputed_in_prefill_mode(model):
    prompt = spanned_batch(pad_first=3)
    edit = art(model, layers=(0, 1), top_k_ratio=0.5)
    cached = model.generate(prompt, max_new_tokens=5, edits=edit, capture=["logits"])
    tokens, logits = greedy(model, prompt, 5, edits=edit)
    np.testing.assert_array_equal(np.asarray(cached.tokens), tokens)
    np.testing.assert_allclose(cached.captured_prefill["logits"][:, -1], logits[:, 0], atol=1e-5)
    np.testing.assert_allclose(cached.captured_steps["logits"][:4, :, 0].transpose(1, 0, 2), logits[:, 1:], atol=1e-5)
    assert not np.allclose(logits, greedy(model, prompt, 5)[1])  # the edit did something


def test_every_step_edits_each_new_row_by_its_single_row_m_index(model):
    prompt = spanned_batch()
    edit = art(model, top_k_ratio=0.5, apply_at="every_step")
    run = model.generate(prompt, max_new_tokens=3, edits=edit, capture=["blocks.0.attn.probs"])
    plain = model.generate(prompt, max_new_tokens=3, edits=art(model, top_k_ratio=0.5),
                           capture=["blocks.0.attn.probs", "blocks.0.attn.scores"])
    rows = np.asarray(run.captured_steps["blocks.0.attn.probs"])[:, :, :, 0]  # [steps, B, H, S]
    for step_row in rows.reshape(-1, 4, rows.shape[-1]):
        copies = [sum(np.allclose(step_row[h], step_row[g], atol=1e-7) for g in range(4)) for h in range(4)]
        assert max(copies) >= 3  # two heads replaced by (a copy of) the most local one
    first = np.asarray(plain.captured_steps["blocks.0.attn.probs"])[0]  # the prefill-only run's first step
    assert np.sum([np.allclose(first[0, h], first[0, g]) for h in range(4) for g in range(4)]) == 4  # untouched


def test_new_numbers_do_not_recompile_and_bad_arguments_are_clear_errors(model):
    batch = spanned_batch()
    model(batch, edits=art(model, top_k_ratio=0.25))
    before = ji.model._forward._cache_size()
    model(batch, edits=art(model, top_k_ratio=0.75))
    assert ji.model._forward._cache_size() == before
    with pytest.raises(ji.ArgumentError, match=r"layers: expected layer indices in \[0, 3\), found \[5\]"):
        art(model, layers=[5])
    for ratio in (0.0, 1.5, -0.1):
        with pytest.raises(ji.ArgumentError, match=r"top_k_ratio: expected a fraction of the heads in \(0, 1\]"):
            art(model, top_k_ratio=ratio)
    with pytest.raises(ji.ArgumentError, match="mode"):
        art(model, mode="median")
    with pytest.raises(ji.ArgumentError, match="apply_at"):
        art(model, apply_at="decode")
    assert isinstance(art(model), ART)
