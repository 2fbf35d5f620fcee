"""Tiny random models shared by the attention-method tests: a GQA decoder and a 4 x 4-patch VLM.

Models are built once per test process (their compiled programs are shared across test files).
"""

from __future__ import annotations

import functools

import jax
import numpy as np

import jaxinterp as ji
from jaxinterp.data.vocab import word_tokenizer
from jaxinterp.images import ImageProcessor
from jaxinterp.models import init_params, make_batch, segment_id
from jaxinterp.models.llama import LlamaConfig
from jaxinterp.models.llava import LlavaConfig
from jaxinterp.models.siglip_vision import SiglipVisionConfig
from jaxinterp.multimodal import encode

VOCAB = 48
WORDS = "is there a red square blue circle yes no answer or what colour the".split()


@functools.lru_cache(maxsize=None)
def tiny_decoder(layers: int = 3, seed: int = 1) -> ji.Model:
    """A 4-head, 2-kv-head Llama without tokenizer (no end-of-sequence: generation runs every step)."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=layers, num_heads=4,
                         num_kv_heads=2, head_dim=8)
    return ji.Model(config, init_params(config, jax.random.key(seed)))


def spanned_batch(*, rows: int = 2, before: int = 3, span: int = 16, after: int = 5, pad_first: int = 0,
                  name: str = "image", seed: int = 0, vocab: int = VOCAB):
    """Random tokens in [0, vocab): `before` question tokens, `span` tokens of segment `name`, `after`
    question tokens; row 0 left-padded by `pad_first` masked tokens (a prompt ready for `generate`)."""
    length = pad_first + before + span + after
    tokens = np.random.default_rng(seed).integers(0, vocab, (rows, length)).astype(np.int32)
    mask = np.ones((rows, length), bool)
    mask[0, :pad_first] = False
    segments = np.full((rows, length), segment_id("question"))
    segments[:, pad_first + before:pad_first + before + span] = segment_id(name)
    segments[0, :pad_first] = segment_id("pad")
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return make_batch(tokens, mask, segments=segments, positions=positions)


@functools.lru_cache(maxsize=None)
def tiny_vlm(seed: int = 4) -> ji.Model:
    """LLaVA over a SigLIP tower: 16 x 16 images, 4 x 4 patches = 16 image tokens, 2 decoder layers
    (seed 4: greedy answers to `vlm_batch` never hold `<image>` or `<eos>`, see `recompute`)."""
    tokenizer = word_tokenizer(WORDS, extra_special=["<image>"])
    vision = SiglipVisionConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, intermediate_size=64,
                                num_layers=2, num_heads=4, head_dim=8, layer_norm_eps=1e-6,
                                activation="gelu_pytorch_tanh")
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8)
    config = LlavaConfig(vision=vision, text=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         select_strategy="full", feature_layer=-1)
    return ji.Model(config, init_params(config, jax.random.key(seed)), tokenizer,
                    processor=ImageProcessor.defaults("siglip", 16))


def images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((16, 16, 3)) * 255).astype(np.uint8) for _ in range(count)]


def vlm_batch(model: ji.Model, *, answers: bool = False, padding: str = "right"):
    """Two chat prompts with a system text and one image each (and answers when asked)."""
    return encode(model, ["is there a red square ?", "what colour is the circle ?"], images(2),
                  system="answer yes or no", answers=["yes", "blue"] if answers else None, padding=padding)


def causal_visible(batch) -> np.ndarray:
    """[B, T, T] bool, by hand: the keys a causal forward's real queries see (earlier real tokens)."""
    mask = np.asarray(batch.mask)
    length = mask.shape[1]
    return np.tril(np.ones((length, length), bool))[None] & mask[:, None, :] & mask[:, :, None]
