"""Tiny random models for the attribution tests: a causal LLaVA, a diffusion LLaVA and a text Llama.

Images are 16 x 16 with 4 x 4 patches (a 4 x 4 grid, no class token, select_strategy 'full'),
so image token k is patch (k // 4, k % 4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxinterp as ji
from jaxinterp.data.vocab import word_tokenizer
from jaxinterp.images import ImageProcessor
from jaxinterp.models import init_params, make_batch, segment_id
from jaxinterp.models.llama import LlamaConfig
from jaxinterp.models.llava import LlavaConfig
from jaxinterp.models.siglip_vision import SiglipVisionConfig

WORDS = "is there a red square blue circle yes no top left right bottom what colour".split()
GRID = 4
PATCHES = GRID * GRID


def tokenizer():
    return word_tokenizer(WORDS, extra_special=["<image>", "<mask>"])


def vlm(*, causal: bool = True, seed: int = 0, layers: int = 2) -> ji.Model:
    """A random LLaVA over a SigLIP tower; `causal=False` gives a LLaDA-V-style diffusion MLLM."""
    tok = tokenizer()
    vision = SiglipVisionConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, intermediate_size=64,
                                num_layers=2, num_heads=4, head_dim=8, layer_norm_eps=1e-6, activation="gelu_pytorch_tanh")
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=layers, num_heads=4,
                       num_kv_heads=2, head_dim=8, causal=causal,
                       objective="next_token" if causal else "masked_token", eos_token_ids=(tok.eos_token_id,),
                       mask_token_id=None if causal else tok.convert_tokens_to_ids("<mask>"))
    config = LlavaConfig(vision=vision, text=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         select_strategy="full", feature_layer=-1)
    params = jax.tree.map(lambda x: x * 3.0, init_params(config, jax.random.key(seed)))  # sharper outputs
    return ji.Model(config, params, tok, processor=ImageProcessor.defaults("siglip", 16))


def text_lm(seed: int = 0) -> ji.Model:
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8)
    return ji.Model(config, init_params(config, jax.random.key(seed)))


def image_batch(model: ji.Model, rows: int = 1, *, prefix: int = 3, suffix: int = 4, seed: int = 0):
    """[rows, prefix + 16 + suffix] tokens: text, the image's 16 placeholders, text whose last two
    tokens are the answer (segment `answer`); random pixels."""
    rng = np.random.default_rng(seed)
    image_id = model.config.image_token_id
    words = rng.integers(7, len(model.tokenizer) - 1, (rows, prefix + suffix))
    tokens = np.concatenate([words[:, :prefix], np.full((rows, PATCHES), image_id), words[:, prefix:]], axis=1)
    segments = np.full(tokens.shape, segment_id("question"))
    segments[:, prefix:prefix + PATCHES] = segment_id("image")
    segments[:, -2:] = segment_id("answer")
    pixels = rng.normal(size=(rows, 1, 3, 16, 16)).astype(np.float32)
    return make_batch(tokens.astype(np.int32), segments=segments, pixels=pixels)


def planted(model: ji.Model, batch, patch: int, *, through_pixels: bool = False) -> tuple:
    """Edits under which the output depends on the image through one patch only: no decoder query may
    attend another image token, and the projector output is zero except at `patch`, where it is a fixed
    positive vector, or (`through_pixels`) the patch's own features, each tower patch attending itself only."""
    v = jnp.abs(jax.random.normal(jax.random.key(2), (model.config.text.hidden_size,))) + 0.5
    first = int(np.flatnonzero(np.asarray(batch.segments[0]) == segment_id("image"))[0])

    def only_patch(x, ctx, v):
        kept = x[:, patch] if through_pixels else v.astype(x.dtype)
        return jnp.zeros_like(x).at[:, patch].set(kept)

    def hide_other_patches(x, ctx, args):
        hidden = ctx.segment_mask("image", keys=True) & (ctx.key_positions != first + patch)
        return jnp.where(hidden[:, None, None, :], -1e9, x)

    def attend_self(x, ctx, args):
        return jnp.where(jnp.eye(x.shape[-1], dtype=bool), x, -1e9)

    edits = (ji.FunctionEdit(patterns=("projector.out",), fn=only_patch, args=v),
             ji.FunctionEdit(patterns=("blocks.*.attn.scores",), fn=hide_other_patches))
    return edits + (ji.FunctionEdit(patterns=("vision.blocks.*.attn.scores",), fn=attend_self),) * through_pixels
