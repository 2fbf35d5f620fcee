"""Information flow and truncation: known cliffs, no-op beyond the last layer, R = 0 hides every image
key, kept tokens by attention, cached = uncached generation, the sweep = separate forwards."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.edits import FunctionEdit
from jaxinterp.methods.infoflow import cliff_layer, information_flow
from jaxinterp.methods.recompute import greedy
from jaxinterp.methods.truncation import Truncate, answer_scores, keep_top, last_query, truncate, truncation_sweep
from jaxinterp.models import segment_id
from tests.attention_fixtures import tiny_decoder, tiny_vlm, vlm_batch

CAPTURE = ["blocks.*.attn.probs"]


def test_cliff_is_the_first_layer_after_the_peaks_where_both_curves_stay_low():
    image = np.array([0.2, 0.6, 0.5, 0.25, 0.35, 0.1, 0.05])
    cam = np.array([0.1, 0.3, 0.9, 0.8, 0.3, 0.2, 0.1])
    assert cliff_layer(image) == 5  # 0.35 at layer 4 is back above half of 0.6
    assert cliff_layer(image, fraction=0.6) == 3
    assert cliff_layer(image, cam) == 5
    assert cliff_layer(np.array([0.1, 0.2, 0.3])) is None
    with pytest.raises(ji.ArgumentError, match="fraction"):
        cliff_layer(image, fraction=1.5)


@pytest.fixture(scope="module")
def vlm():
    return tiny_vlm()


def test_information_flow_measures_mass_from_each_segment_to_the_answer(vlm):
    batch = vlm_batch(vlm, answers=True)
    every = ("system", "image", "question", "answer", "prompt")
    flow = information_flow(vlm, batch, sources=every, intensity=lambda model, batch: np.array([1.0, 0.2]))
    assert flow.mass.shape == (2, 5)
    np.testing.assert_allclose(flow.mass.sum(axis=1), 1.0, atol=1e-5)  # the sources cover every key
    run = vlm.run(batch, capture=CAPTURE)
    mean = np.asarray(run["blocks.1.attn.probs"]).mean(axis=1)
    segments = np.asarray(batch.segments)
    by_row = [mean[b][segments[b] == segment_id("answer")][:, segments[b] == segment_id("image")].sum(-1).mean()
              for b in range(2)]
    assert flow.mass[1, 1] == pytest.approx(np.mean(by_row), rel=1e-5)
    assert flow.to_dict()["intensity"] == [1.0, 0.2]
    with pytest.raises(ji.ArgumentError, match="one value per layer"):
        information_flow(vlm, batch, intensity=lambda model, batch: np.ones(3))


def test_truncation_beyond_the_last_layer_changes_nothing_and_r0_hides_every_image_key(vlm):
    batch = vlm_batch(vlm, answers=True)
    plain = vlm.run(batch, capture=CAPTURE)
    np.testing.assert_array_equal(vlm(batch, edits=Truncate(start=2)), plain.logits)
    cut = vlm.run(batch, capture=CAPTURE, edits=Truncate(start=1))
    np.testing.assert_array_equal(cut["blocks.0.attn.probs"], plain["blocks.0.attn.probs"])
    image = np.asarray(batch.segments == segment_id("image"))
    probs = np.asarray(cut["blocks.1.attn.probs"])
    for row in range(2):
        real = np.asarray(batch.mask[row])
        assert probs[row][:, real][:, :, image[row]].max() == 0.0
    assert not np.allclose(cut.logits, plain.logits)


def test_kept_tokens_are_the_top_r_of_the_last_prompt_query_at_layer_k_minus_1(vlm):
    batch = vlm_batch(vlm, answers=True)
    keep = np.asarray(keep_top(vlm, batch, start=1, count=3))
    assert keep.shape == (2, 16) and (keep.sum(axis=1) == 3).all()
    probs = np.asarray(vlm.run(batch, capture=["blocks.0.attn.probs"])["blocks.0.attn.probs"]).mean(axis=1)
    last = np.asarray(last_query(batch))
    for row in range(2):
        assert batch.segments[row, last[row] + 1] == segment_id("answer")
        image = np.flatnonzero(np.asarray(batch.segments[row]) == segment_id("image"))
        top = np.argsort(-probs[row, last[row], image], kind="stable")[:3]
        np.testing.assert_array_equal(np.flatnonzero(keep[row]), np.sort(top))
    cut = vlm.run(batch, capture=CAPTURE, edits=Truncate(start=1, keep=jnp.asarray(keep)))
    seen = np.asarray(cut["blocks.1.attn.probs"])[0, :, -1][:, np.asarray(batch.segments[0]) == segment_id("image")]
    assert ((seen > 0).any(axis=0) == keep[0]).all()  # only the kept image keys still receive attention
    assert keep_top(vlm, batch, start=1, count=0) is None
    random = np.asarray(keep_top(vlm, batch, start=0, count=5, seed=3))
    assert (random.sum(axis=1) == 5).all()


def _favour_early_keys(scores, ctx, weight):
    """+weight x (S - key index) on every score: the earliest keys win the softmax."""
    return scores + weight * (scores.shape[-1] - jnp.arange(scores.shape[-1], dtype=scores.dtype))


def test_kept_tokens_are_ranked_in_the_forward_with_the_callers_edits(vlm):
    """An edit making layer 0 attend to the earliest keys: the kept image tokens are the first three."""
    batch = vlm_batch(vlm, answers=True)
    edit = FunctionEdit(("blocks.0.attn.scores",), _favour_early_keys, jnp.float32(50.0))
    keep = np.asarray(keep_top(vlm, batch, start=1, count=3, edits=edit))
    np.testing.assert_array_equal(keep, np.arange(16)[None].repeat(2, 0) < 3)
    assert not np.array_equal(keep, np.asarray(keep_top(vlm, batch, start=1, count=3)))
    np.testing.assert_array_equal(truncate(vlm, batch, start=1, count=3, edits=edit).keep, keep)
    found = truncation_sweep(vlm, batch, [1], count=3, edits=edit)
    log_prob, _ = answer_scores(vlm(batch, edits=(edit, Truncate(start=1, keep=jnp.asarray(keep)))), batch)
    np.testing.assert_allclose(found["log_prob"][0], log_prob, atol=1e-4)


def test_cached_generation_equals_uncached(vlm):
    prompt = vlm_batch(vlm, padding="left")
    for edit in (Truncate(start=1), Truncate(start=1, keep=keep_top(vlm, prompt, start=1, count=4))):
        cached = vlm.generate(prompt, max_new_tokens=4, edits=edit, capture=["logits"])
        tokens, logits = greedy(vlm, prompt, 4, edits=edit)
        np.testing.assert_array_equal(np.asarray(cached.tokens), tokens)
        np.testing.assert_allclose(cached.captured_steps["logits"][:3, :, 0].transpose(1, 0, 2), logits[:, 1:],
                                   atol=1e-5)


def test_sweep_over_k_equals_separate_forwards(vlm):
    batch = vlm_batch(vlm, answers=True)
    for count in (0, 2):
        found = truncation_sweep(vlm, batch, [0, 1, 2], count=count)
        assert found["log_prob"].shape == found["correct"].shape == (3, 2)
        for i, start in enumerate((0, 1, 2)):
            log_prob, correct = answer_scores(vlm(batch, edits=truncate(vlm, batch, start=start, count=count)), batch)
            np.testing.assert_allclose(found["log_prob"][i], log_prob, atol=1e-4)
            np.testing.assert_array_equal(found["correct"][i], correct)
    with pytest.raises(ji.ArgumentError, match="span 'answer'"):
        truncation_sweep(vlm, vlm_batch(vlm), [1])
    with pytest.raises(ji.ArgumentError, match=r"count: expected an integer in \[0, 16\]"):
        keep_top(vlm, batch, start=1, count=17)
    with pytest.raises(ji.ArgumentError, match=r"start: expected layer indices >= 0, found \[-1\]"):
        truncate(vlm, batch, start=-1)


def test_truncation_on_a_text_model_span_and_no_recompile():
    model = tiny_decoder()
    tokens = np.arange(12, dtype=np.int32)[None]
    segments = np.full((1, 12), segment_id("question"))
    segments[0, 2:8] = segment_id("system")
    batch = ji.models.make_batch(tokens, segments=segments)
    model(batch, edits=Truncate(start=1, span="system"))
    size = ji.model._forward._cache_size()
    probs = model.run(batch, capture=["blocks.2.attn.probs"], edits=Truncate(start=2, span="system"))
    assert ji.model._forward._cache_size() == size + 1  # the new capture set, not the new K
    assert np.asarray(probs["blocks.2.attn.probs"])[0][:, :, 2:8].max() == 0.0


def test_llava_cam_intensity_is_the_unnormalised_map_per_layer(vlm):
    from jaxinterp.attribution import attribute
    from jaxinterp.methods.infoflow import llava_cam_intensity

    batch = vlm_batch(vlm, answers=True)
    raw = np.asarray(attribute(vlm, batch, method="llava_cam_intensity").image)  # [L, B, N, rows, cols]
    cam = np.asarray(attribute(vlm, batch, method="llava_cam", threshold=None).image)
    peak = raw.max(axis=(-2, -1), keepdims=True)
    np.testing.assert_allclose(cam, raw / np.where(peak > 0, peak, 1.0), atol=1e-5)
    profile = llava_cam_intensity(vlm, batch)
    np.testing.assert_allclose(profile, raw.reshape(len(raw), -1).mean(axis=1), rtol=1e-6)
    assert profile.shape == (2,) and profile[0] > 0
    assert profile[1] == 0.0  # after the last attention, image positions no longer reach the answer
    flow = information_flow(vlm, batch, intensity=llava_cam_intensity)
    np.testing.assert_allclose(flow.intensity, profile)
