"""Sites: the named points of a forward pass where edits, deltas and captures apply.

Every model routes its intermediates through one `Tap` object. A tap call
`tap(name, x, ctx)` does three things, all decided at trace time from Python strings so
that a site nobody asked about costs nothing in the compiled program:

1. applies, in order, every edit whose site patterns match `name` (checking that the edit
   kept the shape and dtype of the site),
2. adds `deltas[name]` when a delta for that site is given (so `jax.grad` with respect to
   the delta is the gradient with respect to the activation),
3. records the value when a capture pattern matches `name`.

Patterns are shell-style globs (`blocks.*.attn.probs`, `blocks.1?.resid_post`); `*`
also crosses dots. TransformerLens hook names (`blocks.3.hook_resid_post`,
`blocks.*.attn.hook_pattern`) are accepted too (see `hook_names.py`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from jaxinterp.errors import JaxinterpError, SiteError, shown
from jaxinterp.models.hook_names import translate

Array = jax.Array

# Token segments travel with every batch as integer ids, so that edits can select
# "the image span" or "the generated tokens" from data rather than from hard-coded offsets.
SEGMENTS: tuple[str, ...] = (
    "pad", "prompt", "generated", "system", "image", "question", "answer", "thinking", "summary",
)


def segment_id(name: str) -> int:
    """Integer id of a segment name (see `SEGMENTS`)."""
    try:
        return SEGMENTS.index(name)
    except ValueError:
        raise SiteError(f"unknown segment {name!r}; known segments: {', '.join(SEGMENTS)}") from None


@functools.lru_cache(maxsize=65536)
def matches(pattern: str, name: str) -> bool:
    """Whether a site name matches a glob pattern, which may use TransformerLens hook names
    (cached: called at every tap during tracing)."""
    return fnmatch.fnmatchcase(name, translate(pattern))


def resolve(patterns: Iterable[str], site_names: Sequence[str], *, argument: str) -> tuple[str, ...]:
    """The site names matched by `patterns`, in forward order; a pattern matching nothing is an error."""
    chosen = set()
    for pattern in patterns:
        hits = [name for name in site_names if matches(pattern, name)]
        if not hits:
            raise SiteError(
                f"{argument}: pattern {pattern!r} matches no site of this model; "
                f"sites look like {', '.join(_examples(site_names))}"
            )
        chosen.update(hits)
    return tuple(name for name in site_names if name in chosen)


def _examples(site_names: Sequence[str]) -> list[str]:
    """A short, representative list of site names for error messages."""
    first_block = [n for n in site_names if n.startswith("blocks.0.")]
    others = [n for n in site_names if not n.startswith("blocks.")]
    return (others[:1] + first_block + others[1:])[:16]


@dataclasses.dataclass(frozen=True)
class Context:
    """What an edit may know about the place and the tokens it runs on.

    Attributes:
      site: full site name, e.g. `blocks.3.attn.probs`.
      layer: block index of the site (None outside blocks).
      positions: [B, T] absolute position of each query token.
      segments: [B, T] segment id of each query token (see `SEGMENTS`).
      steps: [B, T] step index of each query token.
      key_positions: [B, S] absolute position of each key (S = T without a cache).
      key_segments: [B, S] segment id of each key.
      key_steps: [B, S] step index of each key.
      key_mask: [B, S] True where a key holds a real token.
      decoding: True inside a cached decode step, False at prefill or in a full forward.
      scores: [B, H, T, S] pre-softmax scores, given only at `attn.probs` so that an edit
        can recompute the pattern from them.
      values: [B, S, KV, Dh] the values of every key, given only at `attn.head_out` (with a
        cache: every cached slot), so that an edit can mix in values of earlier tokens.
    """

    site: str
    layer: int | None
    positions: Array
    segments: Array
    steps: Array
    key_positions: Array
    key_segments: Array
    key_steps: Array
    key_mask: Array
    decoding: bool = False
    scores: Array | None = None
    values: Array | None = None

    @classmethod
    def of(cls, queries: Any, keys: Any, *, decoding: bool = False) -> Context:
        """Context of a forward whose queries are `queries` (a Batch) and keys `keys` (the Batch or a cache)."""
        return cls(
            site="", layer=None, positions=queries.positions, segments=queries.segments, steps=queries.steps,
            key_positions=keys.positions, key_segments=keys.segments, key_steps=keys.steps, key_mask=keys.mask,
            decoding=decoding,
        )

    def replace(self, **changes: Any) -> Context:
        """The same context with `changes` applied (e.g. another `site`)."""
        return dataclasses.replace(self, **changes)

    def segment_mask(self, name: str, *, keys: bool = False) -> Array:
        """Boolean mask of the queries (or keys) that belong to segment `name`."""
        ids = self.key_segments if keys else self.segments
        return ids == segment_id(name)


class EditLike(Protocol):
    """What the tap needs of an edit: the site patterns it touches and a pure function."""

    @property
    def sites(self) -> tuple[str, ...]: ...

    def __call__(self, x: Array, ctx: Context) -> Array: ...


@dataclasses.dataclass
class Tap:
    """Trace-time router of one forward pass (see the module docstring).

    `capture` holds glob patterns; `captured` fills up as the forward runs. With `check_finite`,
    `finite[name]` records whether every value at each site is finite. When `record_all`
    is set every site is recorded: used once per model to list sites and their shapes.
    With `remat`, families recompute each block in the backward pass instead of keeping its
    activations (`models.decoder.call_block`).
    """

    edits: Sequence[EditLike] = ()
    deltas: Mapping[str, Array] | None = None
    capture: Sequence[str] = ()
    record_all: bool = False
    check_finite: bool = False
    remat: bool = False
    captured: dict[str, Array] = dataclasses.field(default_factory=dict)
    finite: dict[str, Array] = dataclasses.field(default_factory=dict)

    def fork(self) -> Tap:
        """A tap with the same edits, deltas and requests but its own records (for a traced sub-function)."""
        return dataclasses.replace(self, captured={}, finite={})

    def observes(self, name: str) -> bool:
        """Whether anything reads or changes site `name`: an edit, a delta, a capture, a finiteness check.

        A site nobody observes may be computed another way (attention skips materialising
        `attn.scores` / `attn.probs` when this is False for both).
        """
        return (
            self.record_all or self.check_finite
            or (self.deltas is not None and name in self.deltas)
            or any(matches(pattern, name) for edit in self.edits for pattern in edit.sites)
            or any(matches(pattern, name) for pattern in self.capture)
        )

    def __call__(self, name: str, x: Array, ctx: Context) -> Array:
        for edit in self.edits:
            if any(matches(pattern, name) for pattern in edit.sites):
                try:
                    y = edit(x, ctx.replace(site=name))
                except JaxinterpError:
                    raise
                except (TypeError, ValueError) as e:  # jax's shape errors: e.g. a vector of the wrong width
                    raise SiteError(f"edit {type(edit).__name__} at site {name!r} does not fit its value of shape "
                                    f"{x.shape} ({type(e).__name__}: {shown(str(e), 300)})") from e
                if getattr(y, "shape", None) != x.shape or getattr(y, "dtype", None) != x.dtype:
                    raise SiteError(
                        f"edit {type(edit).__name__} at site {name!r} must return shape {x.shape} "
                        f"dtype {x.dtype}; it returned shape {getattr(y, 'shape', None)} "
                        f"dtype {getattr(y, 'dtype', None)}"
                    )
                x = y
        if self.deltas is not None and name in self.deltas:
            x = x + self.deltas[name].astype(x.dtype)
        if self.record_all or any(matches(pattern, name) for pattern in self.capture):
            self.captured[name] = x
        if self.check_finite:
            self.finite[name] = jnp.all(jnp.isfinite(x))
        return x
