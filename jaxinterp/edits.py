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

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxinterp.errors import ArgumentError
from jaxinterp.models.sites import Context

Array = jax.Array


class Edit:
    """Base class of edits (see the module docstring)."""

    @property
    def sites(self) -> tuple[str, ...]:
        raise NotImplementedError

    def __call__(self, x: Array, ctx: Context) -> Array:
        raise NotImplementedError

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
