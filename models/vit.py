"""Vision transformer towers (CLIP, SigLIP) as pure Flax modules through the library's sites.

An image [C, H, W] is cut into square patches, each projected to the residual width (the
reference's stride-p Conv2d is a dense map over a flattened patch), optionally preceded by
a learned class token, summed with learned position embeddings (at the configured image
size only: no interpolation) and, for CLIP, layer-normalised. Pre-LayerNorm encoder blocks
(`shell.LayerNormBlock`, GPT-2's: biased q/k/v/o projections, a two-layer MLP) then attend
bidirectionally over all tokens of an image.

Sites (prefix `vision.`; shapes for B images, P tokens per image, D hidden, H heads,
Dh head_dim, F intermediate):

  vision.embed [B,P,D] (position embeddings added, after CLIP's pre-LayerNorm)
  vision.blocks.{i}.resid_pre [B,P,D] -> attn.in [B,P,D] (LayerNorm 1) -> attn.q / attn.k / attn.v [B,P,H,Dh]
  -> attn.scores / attn.probs [B,H,P,P] f32 -> attn.head_out [B,P,H,Dh] -> attn.out [B,P,D]
  -> resid_mid [B,P,D] -> mlp.in [B,P,D] (LayerNorm 2) -> mlp.act [B,P,F] (act(fc1 x)) -> mlp.out [B,P,D] -> resid_post [B,P,D]
  vision.post_norm [B,P,D] (standalone SigLIP: its `last_hidden_state`)

`resid_post` of block i is the per-patch output of layer i, Hugging Face's
`hidden_states[i + 1]`. Edits see a `Context` whose segments are `image` at every token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxinterp.errors import ArgumentError, ConfigError
from jaxinterp.models.batch import Batch, KVCache, Output, make_batch
from jaxinterp.models.decoder import call_block, frame
from jaxinterp.models.family import CheckpointNames, Family, FamilyConfig
from jaxinterp.models.layers import ACTIVATIONS, DenseGeneral, LayerNorm, activation
from jaxinterp.models.shell import LayerNormBlock
from jaxinterp.models.sites import Context, Tap, segment_id

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionConfig(FamilyConfig):
    """Shape of a ViT tower; a family subclass fixes the class attributes below.

    Attributes:
      image_size: side of the square input image in pixels (inputs must have exactly this size).
      patch_size: side of a square patch; a grid of (image_size // patch_size)^2 patches covers
        the image (trailing pixels fall outside it, as in the reference's strided Conv2d).
      num_channels: input channels (3 for RGB).
      hidden_size, intermediate_size: residual width and MLP width.
      num_layers, num_heads: encoder blocks and attention heads.
      head_dim: width of one head (hidden_size // num_heads in CLIP and SigLIP).
      layer_norm_eps: epsilon of every LayerNorm.
      activation: MLP activation, a Hugging Face `hidden_act` name (`quick_gelu` for CLIP,
        `gelu_pytorch_tanh` for SigLIP).

    Class attributes (per family): `class_token` (a learned class embedding precedes the
    patches), `patch_bias` (the patch projection has a bias), `pre_norm` (LayerNorm on the
    embeddings: CLIP's `pre_layrnorm`), `post_norm` (the standalone model's last hidden state
    is layer-normalised: SigLIP's `post_layernorm`), `hf_model_types` (Hugging Face model types
    of the tower alone and of the full image-text model) and `hf_defaults` (transformers'
    config defaults).
    """

    family: ClassVar[str]
    vocab_size: ClassVar[None] = None  # pixels in, no token vocabulary
    causal: ClassVar[bool] = False  # every patch sees every patch
    class_token: ClassVar[bool]
    patch_bias: ClassVar[bool]
    pre_norm: ClassVar[bool]
    post_norm: ClassVar[bool]
    hf_model_types: ClassVar[tuple[str, str]]
    hf_defaults: ClassVar[Mapping[str, Any]]

    image_size: int
    patch_size: int
    num_channels: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    layer_norm_eps: float
    activation: str

    def __post_init__(self):
        if self.patch_size > self.image_size:
            raise ConfigError(f"patch_size: expected at most image_size={self.image_size}, found {self.patch_size}")
        activation(self.activation)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of patches."""
        side = self.image_size // self.patch_size
        return side, side

    @property
    def tokens_per_image(self) -> int:
        """Tokens the tower sees per image: the patches, plus the class token where there is one."""
        rows, cols = self.grid
        return rows * cols + int(self.class_token)

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    def module(self) -> nn.Module:
        return VisionModel(self)

    def example_batch(self) -> Batch:
        """One blank image: lists the sites and parameter shapes."""
        return pixel_batch(self, jnp.zeros((1, self.num_channels, self.image_size, self.image_size)))

    def check_batch(self, batch: Batch) -> None:
        """Raises ArgumentError unless the batch carries pixels this tower reads (see `pixel_batch`)."""
        if batch.pixels is None:
            raise ArgumentError("inputs: expected a batch with pixels (make it with `pixel_batch(config, pixels)`), "
                                "found none")
        _check_pixels(self, batch.pixels)

    def tensor_parallel_rules(self) -> dict[str, int]:
        """Parameter path regex -> the dimension that tensor parallelism splits (Megatron)."""
        return TENSOR_PARALLEL

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], *, source: str = "config.json") -> VisionConfig:
        """A config from a Hugging Face config dictionary: the tower's own (`hf_model_types[0]`) or a
        full image-text model's (`hf_model_types[1]`), read through its `vision_config`. Keys that
        transformers leaves out of a saved config when they hold the default come from `hf_defaults`."""
        model_type = hf.get("model_type")
        if model_type not in cls.hf_model_types:
            raise ConfigError(f"{source}: model_type: expected one of {list(cls.hf_model_types)}, found {model_type!r}")
        if model_type == cls.hf_model_types[1]:
            hf, source = hf.get("vision_config") or {}, f"{source}: vision_config"
        hf = {**cls.hf_defaults, **hf}
        hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        if hidden % heads:
            raise ConfigError(
                f"{source}: num_attention_heads: expected a divisor of hidden_size={hidden}, found {heads}"
            )
        return cls(
            image_size=int(hf["image_size"]),
            patch_size=int(hf["patch_size"]),
            num_channels=int(hf["num_channels"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            head_dim=hidden // heads,
            layer_norm_eps=float(hf["layer_norm_eps"]),
            activation=_activation_name(hf["hidden_act"], source),
        )


def tower_family(config: type[VisionConfig], checkpoint: CheckpointNames) -> Family:
    """The registry record of a tower family: both of its Hugging Face model types (the tower
    alone, the full image-text model) are read by its `from_hf_config`."""
    return Family(config=config, hf_configs=dict.fromkeys(config.hf_model_types, config.from_hf_config),
                  checkpoint=checkpoint)


# transformers' defaults shared by CLIPVisionConfig and SiglipVisionConfig
HF_DEFAULTS = {
    "image_size": 224, "num_channels": 3, "hidden_size": 768, "intermediate_size": 3072,
    "num_hidden_layers": 12, "num_attention_heads": 12,
}

# Column-parallel q/k/v and fc, row-parallel o and proj: one all-reduce per attention and MLP.
TENSOR_PARALLEL = {
    r"vision/blocks_\d+/(q|k|v)_proj/kernel": 1,  # [D, H, Dh]
    r"vision/blocks_\d+/(q|k|v)_proj/bias": 0,  # [H, Dh]
    r"vision/blocks_\d+/o_proj/kernel": 0,  # [H, Dh, D]
    r"vision/blocks_\d+/fc/kernel": 1,  # [D, F]
    r"vision/blocks_\d+/fc/bias": 0,  # [F]
    r"vision/blocks_\d+/proj/kernel": 0,  # [F, D]
}


def _activation_name(name: Any, source: str) -> str:
    if name not in ACTIVATIONS:
        raise ConfigError(f"{source}: hidden_act: expected one of {sorted(ACTIVATIONS)}, found {name!r}")
    return name


def pixel_batch(config: VisionConfig, pixels: Any) -> Batch:
    """The `Batch` of a tower forward over pixels [B, C, H, W]: one `image` token per patch
    (and class token) at positions 0..P-1, all valid, with the pixels attached."""
    pixels = jnp.asarray(pixels, jnp.float32)
    tokens = jnp.zeros((pixels.shape[0], config.tokens_per_image), jnp.int32)
    return make_batch(tokens, segments=jnp.full(tokens.shape, segment_id("image")), pixels=pixels)


def _check_pixels(config: VisionConfig, pixels: Array) -> None:
    expected = (config.num_channels, config.image_size, config.image_size)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
        raise ArgumentError(
            f"pixels: expected shape [B, {', '.join(map(str, expected))}] (channels first, the tower's "
            f"image size), found {tuple(pixels.shape)}"
        )


def _patches(config: VisionConfig, pixels: Array) -> Array:
    """[B, C, H, W] -> [B, rows * cols, C, p, p], patches in row-major order (the Conv2d's)."""
    _check_pixels(config, pixels)
    (rows, cols), p = config.grid, config.patch_size
    grid = pixels[:, :, : rows * p, : cols * p].reshape(pixels.shape[0], config.num_channels, rows, p, cols, p)
    return grid.transpose(0, 2, 4, 1, 3, 5).reshape(pixels.shape[0], rows * cols, config.num_channels, p, p)


class VisionTower(nn.Module):
    """Pixels -> the hidden states of every layer, as Hugging Face's `output_hidden_states`.

    Instantiate as `VisionTower(config, name="vision")` so that parameters live under `vision`.
    """

    config: VisionConfig

    @nn.compact
    def __call__(self, pixels: Array, tap: Tap, *, layers: int | None = None) -> list[Array]:
        """Returns [embeddings, output of layer 0, ..., output of layer `layers` - 1].

        Args:
          pixels: [B, C, H, W] float pixel values at the configured image size.
          tap: the forward's site router.
          layers: run only the first `layers` encoder layers (all when None); LLaVA's
            `vision_feature_layer=-2` needs `num_layers - 1`.
        """
        cfg = self.config
        layers = cfg.num_layers if layers is None else layers
        if not 0 <= layers <= cfg.num_layers:
            raise ArgumentError(f"layers: expected 0..{cfg.num_layers}, found {layers}")
        positions = self.param("position_embed", nn.initializers.normal(0.02), (cfg.tokens_per_image, cfg.hidden_size))
        patches = _patches(cfg, pixels).astype(positions.dtype)
        x = DenseGeneral(cfg.hidden_size, axis=(-3, -2, -1), use_bias=cfg.patch_bias, name="patch_embed")(patches)
        if cfg.class_token:
            token = self.param("class_embed", nn.initializers.normal(0.02), (cfg.hidden_size,))
            x = jnp.concatenate([jnp.broadcast_to(token, (x.shape[0], 1, cfg.hidden_size)), x], axis=1)
        x = x + positions
        if cfg.pre_norm:
            x = LayerNorm(cfg.layer_norm_eps, name="pre_norm")(x)
        shared = frame(pixel_batch(cfg, pixels), None, causal=False)
        hidden = [tap("vision.embed", x, shared.ctx)]
        for i in range(layers):
            x, _ = call_block(
                LayerNormBlock(cfg, i, sites="vision.blocks", name=f"blocks_{i}"), hidden[-1], tap=tap, ctx=shared.ctx,
                allowed=shared.mask(), cache=None, write_at=None,
            )
            hidden.append(x)
        chex.assert_shape(hidden, (pixels.shape[0], cfg.tokens_per_image, cfg.hidden_size))
        return hidden


class VisionModel(nn.Module):
    """The standalone tower (Hugging Face's `CLIPVisionModel` / `SiglipVisionModel`):
    `Output.hidden` is their `last_hidden_state`; no logits, no pooled output."""

    config: VisionConfig

    @nn.compact
    def __call__(self, batch: Batch, tap: Tap, cache: KVCache | None = None, decoding: bool = False) -> Output:
        """Runs `batch.pixels` [B, C, H, W] (see `pixel_batch`)."""
        cfg = self.config
        cfg.check_batch(batch)
        x = VisionTower(cfg, name="vision")(batch.pixels, tap)[-1]
        if cfg.post_norm:
            patches = pixel_batch(cfg, batch.pixels)
            normed = LayerNorm(cfg.layer_norm_eps, name="post_norm")(x)
            x = tap("vision.post_norm", normed, Context.of(patches, patches))
        return Output(logits=None, hidden=x)
