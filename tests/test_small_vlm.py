"""Small VLMs on synthetic shapes: training steps lower the loss, save/load keeps the logits,
`load_small_vlm` trains once and then loads from the cache (tiny settings throughout)."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

import jaxinterp
from jaxinterp import small_vlm
from jaxinterp.data import shapes
from jaxinterp.models.sites import segment_id


def tiny(kind: str) -> small_vlm.Settings:
    return small_vlm.Settings(kind=kind, train_images=8, steps=12, batch_size=8, learning_rate=1e-2, width=16,
                              heads=2, vision_layers=1, text_layers=1, image_size=16, patch_size=4)


@pytest.fixture(scope="module")
def data():
    return shapes.examples("train", 8, image_size=16, patch_size=4)


@pytest.fixture(scope="module", params=small_vlm.KINDS)
def trained(request, data):
    """(settings, model before training, trained model, training rows, curves)."""
    settings = tiny(request.param)
    model = small_vlm.build(settings)
    rows = small_vlm.training_rows(model, data)
    params, curves = small_vlm.train(model, rows, settings, progress=False)
    return settings, model, jaxinterp.Model(model.config, params, model.tokenizer, processor=model.processor), rows, curves


def test_training_rows_put_answers_where_the_loss_reads_them(trained, data):
    settings, model, _, rows, _ = trained
    words = model.tokenizer.convert_ids_to_tokens(np.asarray(rows.tokens[1]).tolist())
    answer = [w for w, s in zip(words, np.asarray(rows.segments[1])) if s == segment_id("answer")]
    expected = data[0].questions[1].answer.split()
    if settings.kind == "diffusion":  # a fixed-length region after the prompt, padded with <eos>
        expected += ["<eos>"] * (small_vlm.ANSWER_LENGTH - len(expected))
        assert np.asarray(rows.mask[:, -1]).all()
    assert answer == expected
    assert (np.asarray(rows.segments) == segment_id("image")).sum(1).tolist() == [16] * rows.tokens.shape[0]


def test_jitted_train_steps_lower_the_loss(trained):
    settings, model, fitted, rows, curves = trained
    assert len(curves["loss"]) == settings.steps and np.isfinite(curves["loss"]).all()
    loss = small_vlm.LOSSES[settings.kind]
    key = jax.random.key(1)
    before, _ = loss(model.config, model.params, rows, key)
    after, _ = loss(model.config, fitted.params, rows, key)
    assert after < 0.8 * before


def test_save_and_load_keep_the_logits(trained, data, tmp_path):
    _, _, fitted, _, _ = trained
    jaxinterp.save(fitted, tmp_path / "model")
    loaded = jaxinterp.load(tmp_path / "model")
    rows = small_vlm.pairs(data[:2])
    batch, again = small_vlm.prompts(fitted, rows), small_vlm.prompts(loaded, rows)
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(batch.tokens))
    np.testing.assert_array_equal(np.asarray(loaded(again)), np.asarray(fitted(batch)))
    assert small_vlm.answer(loaded, rows) == small_vlm.answer(fitted, rows)


def test_load_small_vlm_trains_once_then_loads(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = small_vlm.Settings(**{**tiny("llava").__dict__, "steps": 2})
    first = small_vlm.load_small_vlm("llava", settings, progress=False)
    entry = small_vlm.cache_entry(settings)
    assert entry.startswith(str(tmp_path)) and os.path.isdir(entry)
    assert small_vlm.training_record(settings)["settings"]["steps"] == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(small_vlm, "_train_and_save", no_training)
    second = small_vlm.load_small_vlm("llava", settings)
    jax.tree.map(np.testing.assert_array_equal, second.params, first.params)
    other = small_vlm.Settings(**{**settings.__dict__, "seed": 1})
    assert small_vlm.cache_entry(other) != entry


def test_kinds_are_checked():
    with pytest.raises(jaxinterp.ArgumentError, match="kind"):
        small_vlm.Settings(kind="gpt")
    with pytest.raises(jaxinterp.ArgumentError, match="settings.kind"):
        small_vlm.load_small_vlm("diffusion", tiny("llava"))
