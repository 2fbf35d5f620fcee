"""Edits: small immutable interventions on sites, composable and cheap to re-run.

An edit names the site patterns it touches (`sites`) and maps `(x, ctx) -> x` there. Edits
are `flax.struct` dataclasses: fields marked `static` (a layer, a site, a function) are
structure and part of the compile key; every other field (a head index, a scale, a
steering vector) is an array leaf, so new values reuse the compiled program.

    zero_head = ScaleHead(layer=5, head=2, scale=0.0)
    steer = AddToResidual(layer=10, vector=v, positions=None)
    model.run(text, edits=compose(zero_head, steer))

Writing a new edit: subclass `Edit` under `@struct.dataclass`, mark structural fields with
`struct.field(pytree_node=False)`, implement `sites` and `__call__`. For a one-off, wrap a
function with `FunctionEdit`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxinterp.errors import ArgumentError
from jaxinterp.models.batch import Batch
from jaxinterp.models.sites import Context

Array = jax.Array


class Edit:
    """Base class of edits (see the module docstring)."""

    @property
    def sites(self) -> tuple[str, ...]:
        raise NotImplementedError

    def __call__(self, x: Array, ctx: Context) -> Array:
        raise NotImplementedError

    def inputs(self, batch: Batch, decoding: bool) -> Batch:
        """The batch the forward runs, given the one it was called with: an edit of the inputs
        themselves (e.g. input embeddings written into `Batch.embeds`) overrides this; site
        edits leave it alone. Applied in edit order, before the first site."""
        return batch

    def check(self, shapes: Mapping[str, jax.ShapeDtypeStruct]) -> None:
        """Raises ArgumentError when the edit's numbers do not fit the model whose sites have
        `shapes` (on an example batch); a model calls it when it resolves the edit. Here: every
        known float number is finite (a NaN steering vector would silently derail generation)."""
        for path, leaf in jax.tree_util.tree_leaves_with_path(self):
            if not isinstance(leaf, jax.core.Tracer) and jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) \
                    and not np.isfinite(np.asarray(leaf, np.float32)).all():
                raise ArgumentError(f"edit {type(self).__name__}{jax.tree_util.keystr(path)}: "
                                    "expected finite numbers, found NaN or infinity")


def compose(*edits: Edit | tuple | list | None) -> tuple[Edit, ...]:
    """One flat tuple of edits, applied in the given order at each site they share."""
    flat: list[Edit] = []
    for edit in edits:
        if edit is None:
            continue
        if isinstance(edit, (tuple, list)):
            flat.extend(compose(*edit))
        elif isinstance(edit, Edit):
            flat.append(edit)
        else:
            raise ArgumentError(f"edits: expected Edit objects, found {type(edit).__name__}")
    return tuple(flat)


def _check_heads(edit: Edit, shapes: Mapping[str, jax.ShapeDtypeStruct]) -> None:
    """An edit's `head` indices must name heads of its site `[B, T, H, Dh]` (a head past the count
    would silently edit nothing); numbers traced under `jit` are not known and not checked."""
    Edit.check(edit, shapes)
    (site,) = edit.sites
    if isinstance(edit.head, jax.core.Tracer) or site not in shapes:
        return
    count, heads = shapes[site].shape[2], np.atleast_1d(np.asarray(edit.head))
    if heads.dtype.kind not in "iu" or heads.size == 0 or heads.min() < 0 or heads.max() >= count:
        raise ArgumentError(f"edit {type(edit).__name__}: head: expected indices in [0, {count}) "
                            f"(the heads of {site}), found {heads.tolist()}")


def _head_mask(heads: Array | int, count: int) -> Array:
    """[count] boolean mask of the chosen head indices (a scalar or a 1-D array)."""
    chosen = jnp.atleast_1d(jnp.asarray(heads))
    return jnp.any(jnp.arange(count)[:, None] == chosen[None, :], axis=1)


@struct.dataclass
class FunctionEdit(Edit):
    """`fn(x, ctx, args) -> x` at the sites matching `patterns`; `args` is a pytree of numbers."""

    patterns: tuple[str, ...] = struct.field(pytree_node=False)
    fn: Callable[[Array, Context, Any], Array] = struct.field(pytree_node=False)
    args: Any = None

    @property
    def sites(self) -> tuple[str, ...]:
        return self.patterns

    def __call__(self, x: Array, ctx: Context) -> Array:
        return self.fn(x, ctx, self.args)


@struct.dataclass
class Pin(Edit):
    """Replaces the whole value of `site` by `value` (same shape, e.g. captured from the same
    batch): the blocks before it become dead code, which XLA drops, so a program pinned at
    `blocks.{l}.resid_pre` that returns only later captures runs from block l on."""

    site: str = struct.field(pytree_node=False)
    value: Array = None

    @property
    def sites(self) -> tuple[str, ...]:
        return (self.site,)

    def __call__(self, x: Array, ctx: Context) -> Array:
        chex.assert_equal_shape([x, self.value])
        return self.value.astype(x.dtype)


@struct.dataclass
class ScaleHead(Edit):
    """Multiplies the output of head(s) `head` of block `layer` by `scale` (0 ablates them).

    Acts on `blocks.{layer}.attn.head_out` [B, T, H, Dh]; `head` may be an int or an array
    of ints and, like `scale`, can change without recompiling.
    """

    layer: int = struct.field(pytree_node=False)
    head: Array | int = 0
    scale: Array | float = 0.0

    @property
    def sites(self) -> tuple[str, ...]:
        return (f"blocks.{self.layer}.attn.head_out",)

    check = _check_heads

    def __call__(self, x: Array, ctx: Context) -> Array:
        hit = _head_mask(self.head, x.shape[2])[None, None, :, None]
        return jnp.where(hit, x * jnp.asarray(self.scale, x.dtype), x)


@struct.dataclass
class SetHead(Edit):
    """Sets the output of head(s) `head` of block `layer` to `value` (a scalar or a [Dh] vector)."""

    layer: int = struct.field(pytree_node=False)
    head: Array | int = 0
    value: Array | float = 0.0

    @property
    def sites(self) -> tuple[str, ...]:
        return (f"blocks.{self.layer}.attn.head_out",)

    check = _check_heads

    def __call__(self, x: Array, ctx: Context) -> Array:
        hit = _head_mask(self.head, x.shape[2])[None, None, :, None]
        return jnp.where(hit, jnp.broadcast_to(jnp.asarray(self.value, x.dtype), x.shape), x)


# Sites whose token axis is not the second: attention maps are [B, H, T, S]; every other site
# with heads is [B, T, H, ...].
_HEADS_FIRST = ("attn.scores", "attn.probs")


def _selection(x: Array, ctx: Context, positions: Array | None, heads: Array | None) -> Array | None:
    """Boolean mask broadcastable to `x`: the query tokens whose absolute position is in `positions`
    and the heads in `heads` (None: all of them); None when nothing narrows the selection."""
    time_axis, head_axis = _axes(ctx)
    hit = None
    if positions is not None:
        wanted = jnp.atleast_1d(jnp.asarray(positions))
        rows = jnp.any(ctx.positions[..., None] == wanted, axis=-1)  # [B, T]
        hit = jnp.expand_dims(rows, [a for a in range(1, x.ndim) if a != time_axis])
    if heads is not None:
        chosen = jnp.expand_dims(_head_mask(heads, x.shape[head_axis]), [a for a in range(x.ndim) if a != head_axis])
        hit = chosen if hit is None else hit & chosen
    return hit


def _axes(ctx: Context) -> tuple[int, int]:
    """(token axis, head axis) of the site `ctx` describes."""
    return (2, 1) if ctx.site.endswith(_HEADS_FIRST) else (1, 2)


def _at_positions(x: Array, value: Array, ctx: Context) -> tuple[Array, Array | None]:
    """`value` laid out like `x`, and where it is defined (None: everywhere).

    A value with the site's rank and a token axis longer than one holds position p at index p
    along that axis (the layout of a run on unpadded or right-padded inputs); it is gathered at
    each token's absolute position, so it also fits a left-padded or bucketed prompt.
    """
    time_axis, _ = _axes(ctx)
    if value.ndim == x.ndim and value.shape[time_axis] > 1:
        length = value.shape[time_axis]
        index = jnp.clip(ctx.positions, 0, length - 1)  # [B, T]
        index = jnp.expand_dims(index, [a for a in range(1, x.ndim) if a != time_axis])
        value = jnp.take_along_axis(value, jnp.broadcast_to(index, index.shape[:time_axis + 1] + value.shape[time_axis + 1:]),
                                    axis=time_axis)
        defined = jnp.expand_dims(ctx.positions < length, [a for a in range(1, x.ndim) if a != time_axis])
        return value, defined
    return value, None


def _write(x: Array, value: Array, hit: Array | None, alpha: Array | float | None, ctx: Context) -> Array:
    """`x` with `value` written where `hit` (everywhere when None), blended by `alpha` (None: replaced)."""
    value, defined = _at_positions(x, jnp.asarray(value), ctx)
    try:
        fits = jnp.broadcast_shapes(value.shape, x.shape) == x.shape
    except ValueError:
        fits = False
    if not fits:
        raise ArgumentError(f"value at site {ctx.site!r}: expected a shape that broadcasts to the site's "
                            f"{x.shape} (or the site over positions 0..P-1), found {value.shape}")
    hit = defined if hit is None else hit if defined is None else hit & defined
    value = jnp.broadcast_to(value.astype(x.dtype), x.shape)
    new = value if alpha is None else x + jnp.asarray(alpha, x.dtype) * (value - x)
    return new if hit is None else jnp.where(hit, new, x)


@struct.dataclass
class Patch(Edit):
    """Writes `value` into site `site` at `positions` and `heads`: activation patching.

        clean = model.run(clean_text, capture=["blocks.3.resid_pre"])
        model.run(corrupted_text, edits=Patch("blocks.3.resid_pre", clean["blocks.3.resid_pre"], positions=4))

    `value` is the site over token positions 0..P-1 ([B, P, ...], as captured by a run of
    unpadded or right-padded inputs; each token takes the entry of its absolute position, and
    tokens at positions >= P are left alone) or broadcasts to the site (a [D] vector, a [Dh]
    head output). `positions` holds absolute
    token positions (`ctx.positions`; an int or an int array, None = every token) and `heads`
    head indices (None = every head; for sites with a head axis only). With `alpha` the site
    becomes x + alpha (value - x) at the selection, interpolating between the run's own value
    (0) and `value` (1); without it the value is written exactly. `value`, `positions`,
    `heads` and `alpha` are array leaves: new ones reuse the compiled program.

    In `generate`, the prompt is written at prefill; decode steps leave the new tokens as they
    are (`value` describes the prompt), and they see the patched prompt through the KV cache.
    """

    site: str = struct.field(pytree_node=False)
    value: Array = None
    positions: Array | int | None = None
    heads: Array | int | None = None
    alpha: Array | float | None = None

    @property
    def sites(self) -> tuple[str, ...]:
        return (self.site,)

    def __call__(self, x: Array, ctx: Context) -> Array:
        if ctx.decoding:
            return x
        return _write(x, self.value, _selection(x, ctx, self.positions, self.heads), self.alpha, ctx)


@struct.dataclass
class PatchLayer(Edit):
    """`Patch` at `blocks.{layer}.{site}` with the layer as data, so a sweep over layers is one program.

    `values` stacks the site over every block ([L, ...], e.g. the captures of a clean run at
    `blocks.*.{site}`); only block `layer` (an int leaf) is written, with `values[layer]`, at
    `positions` and `heads`, blended by `alpha` as in `Patch`. Decode steps are left alone.
    """

    site: str = struct.field(pytree_node=False)
    values: Array = None
    layer: Array | int = 0
    positions: Array | int | None = None
    heads: Array | int | None = None
    alpha: Array | float | None = None

    @property
    def sites(self) -> tuple[str, ...]:
        return (f"blocks.*.{self.site}",)

    def __call__(self, x: Array, ctx: Context) -> Array:
        if ctx.decoding:
            return x
        here = jnp.asarray(self.layer) == ctx.layer
        selected = _selection(x, ctx, self.positions, self.heads)
        return _write(x, self.values[ctx.layer], here if selected is None else here & selected, self.alpha, ctx)


@struct.dataclass
class PatchHeads(Edit):
    """Writes `values[l]` into head h of `blocks.{l}.{site}` wherever `where[l, h]`, in every block at once.

    `values` stacks a site with a head axis over every block ([L, B, T, H, Dh], e.g. the
    captures of a run at `blocks.*.attn.head_out`) and `where` is an [L, H] boolean mask; both
    are array leaves, so a sweep that moves the mask (path patching's sender head) is one
    program. Positions are laid out as in `Patch`; decode steps are left alone.
    """

    site: str = struct.field(pytree_node=False)
    values: Array = None
    where: Array = None

    @property
    def sites(self) -> tuple[str, ...]:
        return (f"blocks.*.{self.site}",)

    def __call__(self, x: Array, ctx: Context) -> Array:
        if ctx.decoding:
            return x
        _, head_axis = _axes(ctx)
        hit = jnp.expand_dims(jnp.asarray(self.where)[ctx.layer], [a for a in range(x.ndim) if a != head_axis])
        return _write(x, self.values[ctx.layer], hit, None, ctx)


@struct.dataclass
class PatternFromScores(Edit):
    """Replaces the attention probabilities of `layers` by `fn(scores, ctx)`.

    `scores` are the masked pre-softmax scores [B, H, T, S] (masked entries hold a very
    negative number, so a softmax-like `fn` keeps the mask). Example: a temperature,
    `PatternFromScores((3,), lambda s, ctx: jax.nn.softmax(s / 2.0, axis=-1))`.
    """

    layers: tuple[int, ...] = struct.field(pytree_node=False)
    fn: Callable[[Array, Context], Array] = struct.field(pytree_node=False)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(f"blocks.{layer}.attn.probs" for layer in self.layers)

    def __call__(self, x: Array, ctx: Context) -> Array:
        return self.fn(ctx.scores, ctx).astype(x.dtype)


@struct.dataclass
class AddToResidual(Edit):
    """Adds `vector` ([D] or [B, D]) to the residual stream of block `layer` at `positions`.

    `positions` holds absolute token positions (an int array; None = every position), so the
    same edit steers a prompt and every token generated after it. `site` picks
    `resid_pre`, `resid_mid` or `resid_post` (default).
    """

    layer: int = struct.field(pytree_node=False)
    vector: Array = None
    positions: Array | None = None
    site: str = struct.field(pytree_node=False, default="resid_post")

    @property
    def sites(self) -> tuple[str, ...]:
        return (f"blocks.{self.layer}.{self.site}",)

    def __call__(self, x: Array, ctx: Context) -> Array:
        vector = jnp.asarray(self.vector, x.dtype)
        vector = vector[:, None, :] if vector.ndim == 2 else vector[None, None, :]
        if self.positions is None:
            return x + vector
        wanted = jnp.atleast_1d(jnp.asarray(self.positions))
        hit = jnp.any(ctx.positions[..., None] == wanted, axis=-1)[..., None]
        return x + jnp.where(hit, vector, jnp.zeros_like(vector))
