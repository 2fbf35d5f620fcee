"""LLaVA-1.5-style vision-language models over any decoder family of the library.

An image passes through a vision tower (CLIP or SigLIP); the hidden state of layer
`feature_layer` (Hugging Face's `vision_feature_layer`, default -2: the penultimate layer,
whose successors are then never computed) is kept whole (`select_strategy="full"`) or without
its first token (`"default"`, which drops CLIP's class token), mapped by a two-layer MLP
projector to the text width, and spliced into the decoder's input embeddings at the image
placeholder tokens, in order. The decoder is any text family (causal or, for a diffusion
MLLM in the style of LLaDA-V, bidirectional).

Sites: the tower's `vision.*`, `projector.out` [B, N x P, D] (N images of P tokens per row),
then the decoder's own sites under their usual names (`embed` is the spliced input).
Image tokens carry segment `image`; `image_grid` says how they map onto patch rows/columns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.errors import ArgumentError, ConfigError
from jaxinterp.models import registry
from jaxinterp.models.batch import Batch, KVCache, Output, make_batch
from jaxinterp.models.family import FamilyConfig
from jaxinterp.models.layers import Dense, activation
from jaxinterp.models.sites import Context, Tap, segment_id
from jaxinterp.models.vit import VisionConfig, VisionTower

Array = jax.Array
SELECT_STRATEGIES = ("default", "full")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlavaConfig(FamilyConfig):
    """A vision tower, a projector and a decoder.

    Attributes:
      vision: the tower's config (`ClipVisionConfig` or `SiglipVisionConfig`).
      text: the decoder's config (any text family; `causal=False` for a diffusion MLLM).
      image_token_id: the placeholder token that one image token replaces.
      feature_layer: index into the tower's hidden states (0 = embeddings, -1 = last layer).
      select_strategy: `default` drops the first token of each image's features, `full` keeps all.
      projector_activation: activation between the projector's two layers.
      projector_bias: the projector's layers carry biases.

    The decoder's attributes that the rest of the library reads of any model (`DECODER_ATTRIBUTES`:
    num_layers, vocab_size, causal, objective, eos_token_ids, ...) read through to `text`.
    """

    family: ClassVar[str] = "llava"

    vision: VisionConfig
    text: Any
    image_token_id: int = 32000  # transformers' default image_token_index
    feature_layer: int = -2
    select_strategy: str = "default"
    projector_activation: str = "gelu"
    projector_bias: bool = True

    def __post_init__(self):
        if self.select_strategy not in SELECT_STRATEGIES:
            raise ConfigError(f"vision_feature_select_strategy: expected one of {SELECT_STRATEGIES}, "
                              f"found {self.select_strategy!r}")
        if not -self.vision.num_layers - 1 <= self.feature_layer <= self.vision.num_layers:
            raise ConfigError(f"vision_feature_layer: expected an index into {self.vision.num_layers + 1} hidden "
                              f"states, found {self.feature_layer}")
        activation(self.projector_activation)

    @property
    def decoder(self) -> FamilyConfig:
        return self.text

    def bidirectional(self) -> LlavaConfig:
        return dataclasses.replace(self, text=self.text.bidirectional())

    @property
    def vision_layers(self) -> int:
        """Tower layers that must run to produce the selected hidden state."""
        return self.feature_layer % (self.vision.num_layers + 1)

    @property
    def tokens_per_image(self) -> int:
        """Decoder tokens that one image occupies."""
        return self.vision.tokens_per_image - (self.select_strategy == "default")

    @property
    def image_grid(self) -> tuple[int, int, int]:
        """(offset, rows, cols): the image tokens from `offset` on are the patches in raster order."""
        rows, cols = self.vision.grid
        offset = self.tokens_per_image - rows * cols
        if offset < 0:
            raise ArgumentError(
                f"image_grid: this model keeps {self.tokens_per_image} of {rows * cols} patches per image "
                "(select_strategy 'default' without a class token), so they do not form a grid")
        return offset, rows, cols

    def module(self) -> nn.Module:
        return Llava(self)

    def tensor_parallel_rules(self) -> dict[str, int]:
        return {**self.vision.tensor_parallel_rules(), **{f"text/{k}": v for k, v in self.text.tensor_parallel_rules().items()}}

    def example_batch(self) -> Batch:
        """One blank image's placeholders between two text tokens (lists every site and parameter)."""
        tokens = [0] + [self.image_token_id] * self.tokens_per_image + [0]
        size = self.vision.image_size
        return make_batch(jnp.array([tokens], jnp.int32),
                          pixels=jnp.zeros((1, 1, self.vision.num_channels, size, size), jnp.float32))

    def check_batch(self, batch: Batch) -> None:
        """Every row must hold exactly one image's worth of placeholder tokens per image."""
        if batch.pixels is None:
            return
        if batch.pixels.ndim != 5 or batch.pixels.shape[2] != self.vision.num_channels:
            raise ArgumentError(
                f"pixels: expected [batch, images, {self.vision.num_channels}, H, W], found shape {batch.pixels.shape}")
        expected = batch.pixels.shape[1] * self.tokens_per_image
        found = np.asarray(jnp.sum(batch.tokens == self.image_token_id, axis=1))
        if (found != expected).any():
            raise ArgumentError(
                f"tokens: each row needs {batch.pixels.shape[1]} image(s) x {self.tokens_per_image} image tokens = "
                f"{expected}; found {found.tolist()} (one placeholder per image in the prompt?)")

    def to_dict(self) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("vision", "text")},
            "vision": {"family": self.vision.family, "config": self.vision.to_dict()},
            "text": {"family": self.text.family, "config": self.text.to_dict()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LlavaConfig:
        return cls(**{**data, "vision": registry.config_from_dict(data["vision"]),
                      "text": registry.config_from_dict(data["text"])})


# What the library reads of any model, answered for a VLM by its decoder.
DECODER_ATTRIBUTES = (
    "num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size", "intermediate_size", "vocab_size",
    "causal", "objective", "max_position_embeddings", "learned_positions", "tie_word_embeddings",
    "bos_token_id", "eos_token_ids", "pad_token_id", "mask_token_id", "rms_norm_eps", "layer_norm_eps",
)
for _name in DECODER_ATTRIBUTES:
    setattr(LlavaConfig, _name, property(lambda self, name=_name: getattr(self.text, name),
                                         doc=f"The decoder's `{_name}`."))


class Projector(nn.Module):
    """Two-layer MLP from the tower's width to the decoder's."""

    width: int
    activation: str
    bias: bool

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = Dense(self.width, use_bias=self.bias, name="linear_1")(x)
        return Dense(self.width, use_bias=self.bias, name="linear_2")(activation(self.activation)(x))


def splice(tokens: Array, image_token_id: int, features: Array) -> tuple[Array, Array]:
    """Embeddings [B, T, D] holding `features` [B, K, D] at the image tokens in order, and their mask."""
    is_image = tokens == image_token_id
    order = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, features.shape[1] - 1)
    return jnp.take_along_axis(features, order[..., None], axis=1), is_image


class Llava(nn.Module):
    """Pixels + tokens -> float32 logits: tower, projector, spliced decoder."""

    config: LlavaConfig

    @nn.compact
    def __call__(self, batch: Batch, tap: Tap, cache: KVCache | None = None, decoding: bool = False) -> Output:
        cfg = self.config
        if batch.pixels is not None:
            rows, images = batch.pixels.shape[:2]
            hidden = VisionTower(cfg.vision, name="vision")(
                batch.pixels.reshape(rows * images, *batch.pixels.shape[2:]), tap, layers=cfg.vision_layers)
            features = hidden[cfg.vision_layers][:, int(cfg.select_strategy == "default"):]
            projected = Projector(cfg.text.hidden_size, cfg.projector_activation, cfg.projector_bias,
                                  name="projector")(features)
            projected = projected.reshape(rows, images * cfg.tokens_per_image, -1)
            image_tokens = make_batch(jnp.zeros(projected.shape[:2], jnp.int32),
                                      segments=jnp.full(projected.shape[:2], segment_id("image")))
            projected = tap("projector.out", projected, Context.of(image_tokens, image_tokens))
            embeds, where = splice(batch.tokens, cfg.image_token_id, projected)
            batch = batch.replace(embeds=embeds, embeds_mask=where, pixels=None)
        return cfg.text.module().clone(parent=self, name="text")(batch, tap, cache, decoding)
