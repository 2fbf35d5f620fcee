"""Prompts with images: placeholder expansion, segments from character spans, errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.data.vocab import word_tokenizer
from jaxinterp.images import ImageProcessor
from jaxinterp.models import SEGMENTS, init_params
from jaxinterp.models.llama import LlamaConfig
from jaxinterp.models.llava import LlavaConfig
from jaxinterp.models.siglip_vision import SiglipVisionConfig
from jaxinterp.multimodal import encode


@pytest.fixture(scope="module")
def vlm():
    tokenizer = word_tokenizer("is there a red square blue circle yes no answer or".split(), extra_special=["<image>"])
    vision = SiglipVisionConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, intermediate_size=64,
                                num_layers=2, num_heads=4, head_dim=8, layer_norm_eps=1e-6, activation="gelu_pytorch_tanh")
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8)
    config = LlavaConfig(vision=vision, text=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         select_strategy="full", feature_layer=-1)
    return ji.Model(config, init_params(config, jax.random.key(0)), tokenizer,
                    processor=ImageProcessor.defaults("siglip", 16))


def _image(height=20, width=24, seed=0):
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def test_segments_follow_the_text_they_came_from(vlm):
    batch = encode(vlm, ["is there a red square?", "is there a blue circle?"], [_image(), _image(30, 10, 1)],
                   system="answer yes or no", answers=["yes", "no"])
    assert batch.pixels.shape == (2, 1, 3, 16, 16)
    words = vlm.tokenizer.convert_ids_to_tokens(np.asarray(batch.tokens[0]).tolist())
    labels = [SEGMENTS[s] for s in np.asarray(batch.segments[0])]
    by_segment = lambda name: [w for w, s in zip(words, labels) if s == name]  # noqa: E731
    assert by_segment("system") == ["answer", "yes", "or", "no"]
    assert by_segment("question") == ["is", "there", "a", "red", "square", "?"]
    assert by_segment("answer") == ["yes"]
    assert by_segment("image") == ["<image>"] * 16
    assert vlm(batch).shape == (2, batch.tokens.shape[1], len(vlm.tokenizer))


def test_placeholder_and_image_count_errors(vlm):
    with pytest.raises(ji.ArgumentError, match="placeholder"):
        encode(vlm, "<image> <image> is there a red square?", _image())
    with pytest.raises(ji.ArgumentError, match="same number of images"):
        encode(vlm, ["is there a red square?", "is there a circle?"], [[_image()], [_image(), _image()]])
    with pytest.raises(ji.ArgumentError, match="channel"):
        encode(vlm, "is there a red square?", np.zeros((16, 16, 2), np.uint8))
