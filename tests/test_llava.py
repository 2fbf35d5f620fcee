"""LLaVA composition: parity with transformers, both feature-select strategies, both towers,
old checkpoint layouts, and clear errors for mismatched images."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

import jaxinterp as ji
from jaxinterp.models import make_batch
from tests.hf_tiny import redraw

IMAGE_TOKEN = 95
VISION = {
    "clip": lambda: transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                  num_attention_heads=4, image_size=16, patch_size=4),
    "siglip": lambda: transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                      num_attention_heads=4, image_size=16, patch_size=4),
}
TEXT = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


def _llava(tmp_path, tower: str, strategy: str, feature_layer: int = -2):
    torch.manual_seed(0)
    config = transformers.LlavaConfig(vision_config=VISION[tower](), text_config=transformers.LlamaConfig(**TEXT),
                                      image_token_index=IMAGE_TOKEN, vision_feature_select_strategy=strategy,
                                      vision_feature_layer=feature_layer)
    reference = redraw(transformers.LlavaForConditionalGeneration(config).eval())
    folder = tmp_path / f"{tower}-{strategy}"
    reference.save_pretrained(folder)
    return str(folder), reference


def _inputs(per_image: int, images: int = 1):
    rows = [[1, 5, 7] + [IMAGE_TOKEN] * per_image * images + [8, 9, 10],
            [2, 3] + [IMAGE_TOKEN] * per_image * images + [4, 6, 11, 12]]
    pixels = np.random.default_rng(0).normal(size=(2, images, 3, 16, 16)).astype(np.float32)
    return np.array(rows, np.int32), pixels


def _reference_logits(reference, tokens, pixels):
    with torch.no_grad():
        flat = torch.tensor(pixels.reshape(-1, *pixels.shape[2:]))
        return reference(input_ids=torch.tensor(tokens).long(), pixel_values=flat).logits.numpy()


@pytest.mark.parametrize("tower, strategy, feature_layer", [
    ("clip", "default", -2), ("clip", "full", -2), ("siglip", "full", -1), ("clip", "default", 1),
])
def test_logits_match_transformers(tmp_path, tower, strategy, feature_layer):
    folder, reference = _llava(tmp_path, tower, strategy, feature_layer)
    model = ji.load(folder, progress=False)
    tokens, pixels = _inputs(model.config.tokens_per_image, images=2)
    ours = np.asarray(model(make_batch(tokens, pixels=pixels)))
    theirs = _reference_logits(reference, tokens, pixels)
    assert np.abs(theirs).max() > 1.0
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_sites_segments_and_grid(tmp_path):
    folder, _ = _llava(tmp_path, "clip", "default")
    model = ji.load(folder, progress=False)
    assert model.config.image_grid == (0, 4, 4)
    for site in ("vision.blocks.0.attn.probs", "projector.out", "blocks.1.attn.probs", "embed", "logits"):
        assert site in model.sites
    tokens, pixels = _inputs(16)
    run = model.run(make_batch(tokens, pixels=pixels), capture=["projector.out", "embed"])
    row = run["embed"][0]
    image_positions = np.flatnonzero(tokens[0] == IMAGE_TOKEN)
    np.testing.assert_allclose(row[image_positions], run["projector.out"][0], atol=1e-6)
    text_only = model(np.array([[1, 2, 3]], np.int32))  # no image: the decoder alone
    assert text_only.shape == (1, 3, 96)


def test_old_checkpoint_layout_loads(tmp_path):
    folder, reference = _llava(tmp_path, "clip", "default")
    renamed = {}
    for name, value in reference.state_dict().items():
        name = name.replace("model.language_model.", "language_model.model.").replace("lm_head.", "language_model.lm_head.")
        name = name.replace("model.vision_tower.", "vision_tower.vision_model.")
        renamed[name.replace("model.multi_modal_projector.", "multi_modal_projector.")] = value.numpy()
    old = tmp_path / "old"
    old.mkdir()
    safetensors.numpy.save_file(renamed, old / "model.safetensors")
    (old / "config.json").write_text(open(os.path.join(folder, "config.json")).read())
    new, legacy = ji.load(folder, progress=False), ji.load(str(old), progress=False)
    tokens, pixels = _inputs(16)
    np.testing.assert_array_equal(new(make_batch(tokens, pixels=pixels)), legacy(make_batch(tokens, pixels=pixels)))


def test_mismatched_inputs_and_projector_are_clear_errors(tmp_path):
    folder, reference = _llava(tmp_path, "clip", "default")
    model = ji.load(folder, progress=False)
    tokens, pixels = _inputs(16)
    with pytest.raises(ji.ArgumentError, match=r"image tokens = 32; found \[16, 16\]"):
        model(make_batch(tokens, pixels=np.concatenate([pixels, pixels], axis=1)))
    with pytest.raises(ji.ArgumentError, match="pixels: expected"):
        model(make_batch(tokens, pixels=pixels[:, :, :1]))
    tensors = {k: v.numpy() for k, v in reference.state_dict().items()}
    tensors["model.multi_modal_projector.linear_1.weight"] = np.zeros((64, 48), np.float32)
    broken = tmp_path / "broken"
    broken.mkdir()
    safetensors.numpy.save_file(tensors, broken / "model.safetensors")
    (broken / "config.json").write_text(json.dumps(json.load(open(os.path.join(folder, "config.json")))))
    with pytest.raises(ji.CheckpointError, match=r"linear_1\.weight: expected shape \(64, 32\), found \(64, 48\)"):
        ji.load(str(broken), progress=False)
