"""EVAS: the densest sink head is found and broadcast; zero targets = plain model; cached = recomputed."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.attention import column_sink_scores, sink_density
from jaxinterp.methods.evas import broadcast_densest, evas, sink_profile
from jaxinterp.methods.recompute import greedy
from jaxinterp.models import segment_id
from tests.attention_fixtures import causal_visible, spanned_batch, tiny_decoder, tiny_vlm, vlm_batch

CAPTURE = ["blocks.*.attn.probs"]


def test_broadcast_copies_the_densest_head_first_maximum_and_only_when_a_sink_exists():
    probs = jnp.arange(4, dtype=jnp.float32)[None, :, None, None] * jnp.ones((3, 4, 2, 2))
    density = jnp.array([[0.1, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.2, 0.3]])
    everywhere = np.asarray(broadcast_densest(probs, density, 4))[:, :, 0, 0]
    np.testing.assert_array_equal(everywhere, [[1, 1, 1, 1], [0, 1, 2, 3], [0, 0, 0, 0]])
    two = np.asarray(broadcast_densest(probs, density, 2))[:, :, 0, 0]
    np.testing.assert_array_equal(two, [[1, 1, 2, 1], [0, 1, 2, 3], [0, 0, 0, 3]])  # the two least dense heads
    quirk = np.asarray(broadcast_densest(probs, density, 4, skip_head_zero=True))[:, :, 0, 0]
    np.testing.assert_array_equal(quirk[2], [0, 1, 2, 3])


@pytest.fixture(scope="module")
def vlm():
    return tiny_vlm()


def test_every_head_of_the_layer_takes_the_densest_sink_heads_pattern(vlm):
    batch = vlm_batch(vlm)
    assert int(jnp.sum(batch.segments[0] == segment_id("image"))) == 16  # the span comes from the segments
    plain = vlm.run(batch, capture=CAPTURE)
    edited = vlm.run(batch, capture=CAPTURE, edits=evas(vlm, beta=0.01))
    before, after = plain["blocks.1.attn.probs"], edited["blocks.1.attn.probs"]
    keys = batch.segments == segment_id("image")
    density = np.asarray(sink_density(column_sink_scores(before, causal_visible(batch), keys, keys), keys, 0.01))
    assert density.max() > 0
    for row in range(2):
        real = np.asarray(batch.mask[row])
        source = before[row, density[row].argmax()]
        for head in range(4):
            np.testing.assert_allclose(after[row, head][real], source[real], atol=1e-6)
    np.testing.assert_array_equal(edited["blocks.0.attn.probs"], plain["blocks.0.attn.probs"])
    np.testing.assert_allclose(sink_profile(vlm, batch, beta=0.01)[1], density, atol=1e-6)


def test_zero_targets_or_no_sink_leave_logits_unchanged(vlm):
    batch = vlm_batch(vlm)
    plain = vlm(batch)
    np.testing.assert_array_equal(vlm(batch, edits=evas(vlm, targets=0, beta=0.01)), plain)
    np.testing.assert_array_equal(vlm(batch, edits=evas(vlm, beta=2.0)), plain)  # no column can exceed 1
    assert not np.allclose(vlm(batch, edits=evas(vlm, beta=0.01)), plain)


def test_cached_generation_equals_recomputed_in_prefill_mode(vlm):
    prompt = vlm_batch(vlm, padding="left")
    edit = evas(vlm, beta=0.01, layers=(0, 1), form="code")
    cached = vlm.generate(prompt, max_new_tokens=4, edits=edit, capture=["logits"])
    tokens, logits = greedy(vlm, prompt, 4, edits=edit)
    np.testing.assert_array_equal(np.asarray(cached.tokens), tokens)
    np.testing.assert_allclose(cached.captured_prefill["logits"][:, -1], logits[:, 0], atol=1e-5)
    np.testing.assert_allclose(cached.captured_steps["logits"][:3, :, 0].transpose(1, 0, 2), logits[:, 1:], atol=1e-5)


def test_text_only_model_over_any_span_and_every_step():
    model = tiny_decoder()
    batch = spanned_batch(name="system", span=10)
    edit = evas(model, span="system", layers=(0,), beta=0.01)
    run = model.run(batch, capture=["blocks.0.attn.probs"], edits=edit)["blocks.0.attn.probs"]
    np.testing.assert_allclose(run[:, 1:], np.broadcast_to(run[:, :1], run[:, 1:].shape), atol=1e-7)
    stepped = model.generate(batch, max_new_tokens=2, edits=evas(model, span="system", layers=(0,), beta=0.01,
                                                                   form="code", apply_at="every_step"),
                             capture=["blocks.0.attn.probs"])
    rows = np.asarray(stepped.captured_steps["blocks.0.attn.probs"])[:, :, :, 0]
    np.testing.assert_allclose(rows[:, :, 1:], np.broadcast_to(rows[:, :, :1], rows[:, :, 1:].shape), atol=1e-7)


def test_bad_arguments_are_clear_errors(vlm):
    with pytest.raises(ji.ArgumentError, match=r"layers: expected layer indices in \[0, 2\), found \[2\]"):
        evas(vlm, layers=[2])
    with pytest.raises(ji.ArgumentError, match=r"targets: expected an integer in \[0, 4\], found 5"):
        evas(vlm, targets=5)
    with pytest.raises(ji.ArgumentError, match="span: expected a segment name"):
        evas(vlm, span="pixels")
    with pytest.raises(ji.ArgumentError, match="form"):
        evas(vlm, form="digest")
    with pytest.raises(ji.ArgumentError, match="span 'image': no token of row"):
        sink_profile(vlm, spanned_batch(name="question", vocab=vlm.config.image_token_id))
