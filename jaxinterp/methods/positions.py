"""Positional schemes for vision-language models: CCA, MCA and (provisional) DAPE-BR.

Each scheme gives every patch of the image grid (u, v) a position-id offset from the image's
first id s, says how many ids the image occupies (text after it continues at s + span), and may
replace the causal mask inside the image by a rank rule: query q may attend key k of the same
image iff rank(k) <= rank(q); all other attention stays causal (spec dape_br.md).

- CCA (Xing et al., NeurIPS 2024, `cca-llava` `cca.py`): rank = concentric ring,
  min(u, v, H-1-u, W-1-v) (outermost 0); offsets = ring; span = max ring + 1 (12 for 24 x 24).
- MCA (MCA-LLaVA, ACM MM 2025, `mca.py`): rank = Manhattan distance to the nearest corner,
  min(u, H-1-u) + min(v, W-1-v); offsets = rank; span = max + 1 (23 for 24 x 24).
- DAPE-BR (paper not found; the spec's inferred reading, every part an option): tokens stay in
  raster order in the sequence and the cache, and text ids stay monotone (nothing is ever
  reordered here; `raster_ids=True` also keeps the image ids in raster order so only the mask
  changes); a global visual-text band, text after the image at s + span (`band`); an isotropic
  fused patch distance from the image centre, d = w L1 + (1 - w) Linf with w = 1 / (1 + sqrt 2)
  (the octagonal approximation of L2; `metric`, `weight`), turned into ids by
  offset = round((d_max - d) / step) so the centre is nearest to the text; and the
  patch-distance causal mask on those ranks (`patch_mask`). With `metric="linf"` it equals CCA
  and with `metric="l1"` MCA on even square grids.
- raster: the identity (offsets = raster index, rank = raster index, i.e. causal).

Positions are data (`Batch.positions`, read by RoPE at prefill and, continued from the prompt's
last id, at every decode step). Because the rank rule unmasks keys that the causal mask would
hide, `with_scheme` turns the decoder's causal mask off and makes the whole mask (causal
outside the image, ranks inside) a default edit on `attn.scores` of the model value, so
every run, gradient, generation and method applies it; its batches get the scheme's ids.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxinterp.attention.checks import check_segment
from jaxinterp.edits import Edit
from jaxinterp.errors import ArgumentError
from jaxinterp.model import Model
from jaxinterp.models import Batch
from jaxinterp.models.masks import MASKED
from jaxinterp.models.sites import Context, segment_id

Array = jax.Array
METRICS = ("fused", "l1", "linf", "l2")


@dataclasses.dataclass(frozen=True)
class Scheme:
    """A patch-grid positional scheme.

    Attributes:
      name: for messages and model names.
      offsets: [rows, cols] int position-id offset of each patch from the image's first id.
      span: ids the image occupies (text after it starts at first id + span).
      ranks: [rows, cols] int in-image mask ranks (q sees k iff rank(k) <= rank(q)); None keeps
        the causal mask inside the image.
    """

    name: str
    offsets: np.ndarray
    span: int
    ranks: np.ndarray | None

    @property
    def grid(self) -> tuple[int, int]:
        return self.offsets.shape


def _coordinates(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    if rows < 1 or cols < 1:
        raise ArgumentError(f"grid: expected positive rows and cols, found {rows} x {cols}")
    return np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")


def _ranked(name: str, ranks: np.ndarray) -> Scheme:
    return Scheme(name=name, offsets=ranks, span=int(ranks.max()) + 1, ranks=ranks)


def raster(rows: int, cols: int) -> Scheme:
    """The identity: raster ids, causal mask (equals the plain model)."""
    u, v = _coordinates(rows, cols)
    return _ranked("raster", u * cols + v)


def cca(rows: int, cols: int) -> Scheme:
    """Concentric Causal Attention: ring ids and the ring causal mask."""
    u, v = _coordinates(rows, cols)
    return _ranked("cca", np.minimum(np.minimum(u, v), np.minimum(rows - 1 - u, cols - 1 - v)))


def mca(rows: int, cols: int) -> Scheme:
    """Manhattan Causal Attention: nearest-corner Manhattan ids and mask."""
    u, v = _coordinates(rows, cols)
    return _ranked("mca", np.minimum(u, rows - 1 - u) + np.minimum(v, cols - 1 - v))


def dape_br(rows: int, cols: int, *, metric: str = "fused", weight: float = 1 / (1 + math.sqrt(2)), step: float = 1.0,
            raster_ids: bool = False, band: bool = True, patch_mask: bool = True) -> Scheme:
    """DAPE-BR as the spec infers it (provisional; see the module docstring).

    Args:
      metric: patch distance from the image centre: `fused` (w L1 + (1 - w) Linf), `l1`, `linf`, `l2`.
      weight: w of the fused metric.
      step: distance per position id (ids = round((d_max - d) / step)).
      raster_ids: keep raster image ids (only the mask follows the distance).
      band: text after the image starts right after the image's ids (else at its raster place,
        s + rows x cols).
      patch_mask: the patch-distance causal mask inside the image (else causal).
    """
    if metric not in METRICS:
        raise ArgumentError(f"metric: expected one of {METRICS}, found {metric!r}")
    if not 0 <= weight <= 1 or step <= 0:
        raise ArgumentError(f"weight, step: expected weight in [0, 1] and step > 0, found {weight}, {step}")
    u, v = _coordinates(rows, cols)
    du, dv = np.abs(u - (rows - 1) / 2), np.abs(v - (cols - 1) / 2)
    distance = {"l1": du + dv, "linf": np.maximum(du, dv), "l2": np.hypot(du, dv),
                "fused": weight * (du + dv) + (1 - weight) * np.maximum(du, dv)}[metric]
    ranks = np.rint((distance.max() - distance) / step).astype(np.int64)
    offsets = raster(rows, cols).offsets if raster_ids else ranks
    span = int(offsets.max()) + 1 if band else rows * cols
    return Scheme(name="dape_br", offsets=offsets, span=span, ranks=ranks if patch_mask else None)


SCHEMES = {"raster": raster, "cca": cca, "mca": mca, "dape_br": dape_br}


def _image_tokens(segments: Array, per_image: int, span: str) -> tuple[Array, Array, Array]:
    """Per token: is it in the span, which image of its row, and its index inside that image."""
    inside = segments == segment_id(span)
    ordinal = jnp.cumsum(inside, axis=-1) - 1
    return inside, jnp.where(inside, ordinal // per_image, -1), jnp.where(inside, ordinal % per_image, 0)


def scheme_positions(batch: Batch, scheme: Scheme, *, offset: int = 0, span: str = "image") -> Batch:
    """The batch with the scheme's position ids (pads keep theirs).

    Each image is `offset` leading non-patch tokens (a class token) then the grid in raster
    order; its ids are s + i for the leading tokens and s + offset + scheme offset for patches;
    text continues after s + offset + scheme.span. Every row's image token count must be a
    multiple of offset + rows x cols.
    """
    per_image = offset + scheme.offsets.size
    inside, image, within = _image_tokens(batch.segments, per_image, check_segment(span))
    if not isinstance(batch.segments, jax.core.Tracer):
        counts = np.asarray(jnp.sum(inside, axis=-1))
        if np.any(counts % per_image):
            raise ArgumentError(
                f"image grid: {scheme.grid[0]} x {scheme.grid[1]} patches (+{offset}) = {per_image} tokens per image "
                f"do not fit the {counts.tolist()} {span} tokens of the rows")
    table = jnp.asarray(np.concatenate([np.arange(offset), offset + scheme.offsets.ravel()]), jnp.int32)
    text = batch.mask & ~inside
    text_before = jnp.cumsum(text, axis=-1) - text
    images_before = jnp.where(inside, image, jnp.cumsum(inside, axis=-1) // per_image)
    ids = text_before + images_before * (offset + scheme.span) + jnp.where(inside, table[within], 0)
    return batch.replace(positions=jnp.where(batch.mask, ids, batch.positions).astype(jnp.int32))


@struct.dataclass
class SchemeMask(Edit):
    """The whole attention mask of a scheme on `attn.scores` of every block (for a decoder whose
    own mask is bidirectional): causal by slot, except that inside one image q sees k iff
    rank(k) <= rank(q). `ranks` [tokens per image]: rank of each image token, -1 for tokens
    outside the grid (causal). Prefill is assumed to start from an empty cache (as in `generate`);
    a decode step's single query already sees exactly the written slots."""

    ranks: Array
    span: str = struct.field(pytree_node=False, default="image")

    @property
    def sites(self) -> tuple[str, ...]:
        return ("blocks.*.attn.scores",)

    def __call__(self, scores: Array, ctx: Context) -> Array:
        if ctx.decoding:
            return scores
        length, keys = scores.shape[-2:]

        def describe(segments):
            inside, image, within = _image_tokens(segments, self.ranks.shape[0], self.span)
            rank = jnp.where(inside, self.ranks[within], -1)
            return jnp.where(rank >= 0, image, -1), rank

        query_image, query_rank = describe(ctx.segments)
        key_image, key_rank = describe(ctx.key_segments)
        same = (query_image[:, :, None] >= 0) & (query_image[:, :, None] == key_image[:, None, :])  # grid pairs
        causal = jnp.arange(keys)[None, :] <= jnp.arange(length)[:, None]
        allowed = jnp.where(same, key_rank[:, None, :] <= query_rank[:, :, None], causal[None])
        return jnp.where(allowed[:, None], scores, MASKED)


def with_scheme(model: Model | str, scheme: Scheme | str, *, span: str = "image", **options: Any) -> Model:
    """`model` (or `jaxinterp.load(model)`) under a scheme, given as a `Scheme` or a name in
    `SCHEMES` built for the model's image grid with `options` (e.g. `metric="l2"` for DAPE-BR).

    The result is the same model value with three things replaced, so every path that runs it
    (`run`, `grad`, `generate`, attribution, attention statistics, every method) keeps them:
    its batches get the scheme's position ids (`prepare`), its decoder's mask is bidirectional
    and the `SchemeMask` default edit supplies the whole mask; the objective (and so which
    logit row a target reads) is the model's own.
    """
    if isinstance(model, str):
        from jaxinterp.loader import load

        model = load(model)
    if isinstance(scheme, str):
        if scheme not in SCHEMES:
            raise ArgumentError(f"scheme: expected one of {sorted(SCHEMES)}, found {scheme!r}")
        if model.config.image_grid is None:
            raise ArgumentError(f"scheme {scheme!r}: {model.config.family} has no image grid; build the Scheme "
                                "with its rows and cols")
        scheme = SCHEMES[scheme](*model.config.image_grid[1:], **options)
    config = model.config
    offset, rows, cols = (0, *scheme.grid) if config.image_grid is None else config.image_grid
    if (rows, cols) != scheme.grid:
        raise ArgumentError(f"image grid: the model's images are {rows} x {cols} patches, the {scheme.name} "
                            f"scheme was built for {scheme.grid[0]} x {scheme.grid[1]}")
    span = check_segment(span)
    patches = np.full(scheme.offsets.size, -1) if scheme.ranks is None else scheme.ranks.ravel()
    ranks = np.concatenate([np.full(offset, -1), patches])
    mask = SchemeMask(ranks=jnp.asarray(ranks, jnp.int32), span=span)
    return model.replace(
        config=config.bidirectional(), edits=(mask, *model.edits),
        prepare=(*model.prepare, functools.partial(scheme_positions, scheme=scheme, offset=offset, span=span)),
        source=f"{model.source or config.family}+{scheme.name}")
