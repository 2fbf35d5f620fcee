"""Where an attribution map lives: the patch grid of each image, or the tokens of each row.

A site's activation becomes image features [B, N, rows, cols, D] (N images per row) from the
model's patch coordinates: decoder sites ([B, T, ...]) are read at the image placeholder
tokens, in order; `projector.out` ([B, N x P, D]) per image; vision-tower sites
(`vision.*`, [B x N, P, D]) after the class token. Within an image the tokens from
`image_grid`'s offset on are the patches in raster order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxinterp.errors import ArgumentError
from jaxinterp.models import Batch

Array = jax.Array
REGIONS = ("image", "tokens")


def check_region(region: str, config, batch: Batch) -> None:
    """Raises a clear error when an image map is asked of a model or inputs without an image span."""
    if region not in REGIONS:
        raise ArgumentError(f"region: expected one of {REGIONS}, found {region!r}")
    if region == "tokens":
        return
    if config.image_grid is None:
        raise ArgumentError(f"region='image': a {config.family} model has no image span (image tokens of a "
                            "vision-language model) to map; ask for region='tokens'")
    if batch.pixels is None:
        raise ArgumentError("region='image': the inputs carry no image (pixels); encode them with "
                            "`jaxinterp.multimodal.encode(model, prompt, image)` or ask for region='tokens'")
    grid_shape(config)  # raises when the image tokens do not form a grid


def grid_shape(config) -> tuple[int, int]:
    """(rows, cols) of one image's patch grid."""
    return config.image_grid[1:]


def image_positions(config, batch: Batch) -> Array:
    """[B, N x tokens_per_image] int32 positions of the image placeholder tokens of each row, in order."""
    count = batch.pixels.shape[1] * config.tokens_per_image
    is_image = batch.tokens == config.image_token_id
    return jnp.argsort(~is_image, axis=1, stable=True)[:, :count].astype(jnp.int32)


def image_features(config, batch: Batch, site: str, x: Array) -> Array:
    """[B, N, rows, cols, C] float32 features of each image patch at `site` (C = the site's trailing dims)."""
    offset, rows, cols = config.image_grid
    batch_size, images = batch.pixels.shape[:2]
    if site.startswith("vision."):
        skip = int(config.vision.class_token)
        x = x.reshape(batch_size, images, x.shape[1], -1)[:, :, skip:skip + rows * cols]
        return x.reshape(batch_size, images, rows, cols, -1).astype(jnp.float32)
    if site != "projector.out":
        if x.shape[:2] != batch.tokens.shape:
            raise ArgumentError(f"site {site!r}: an image map needs a per-token site shaped [batch, tokens, ...]; "
                                f"found shape {x.shape}")
        x = jnp.take_along_axis(x.reshape(*x.shape[:2], -1), image_positions(config, batch)[..., None], axis=1)
    x = x.reshape(batch_size, images, config.tokens_per_image, -1)[:, :, offset:offset + rows * cols]
    return x.reshape(batch_size, images, rows, cols, -1).astype(jnp.float32)


def token_features(batch: Batch, site: str, x: Array) -> Array:
    """[B, T, C] float32 features of every token at a per-token `site`."""
    if x.shape[:2] != batch.tokens.shape:
        raise ArgumentError(f"site {site!r}: a token map needs a per-token site shaped [batch, tokens, ...]; "
                            f"found shape {x.shape}")
    return x.reshape(*x.shape[:2], -1).astype(jnp.float32)


def features(config, batch: Batch, site: str, x: Array, region: str) -> tuple[Array, Array]:
    """Features of the region flattened for pooling: ([..., n, C], mask [..., n]) with n the patches of
    one image ([B, N, n, C]) or the tokens of one row ([B, T, C]); the mask marks real tokens."""
    if region == "tokens":
        return token_features(batch, site, x), batch.mask
    f = image_features(config, batch, site, x)
    flat = f.reshape(*f.shape[:2], -1, f.shape[-1])
    return flat, jnp.ones(flat.shape[:-1], bool)


def unflatten(maps: Array, config, region: str) -> Array:
    """Pooled region maps [..., n] back in their layout: [..., rows, cols] for images, [..., T] for tokens."""
    return maps.reshape(*maps.shape[:-1], *grid_shape(config)) if region == "image" else maps
