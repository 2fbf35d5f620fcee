"""`Model`: one value (config, parameters, tokenizer, default edits, batch preparation,
placement) and the one program every path runs.

`Model.apply` is that program: a pure function of the model (a JAX pytree: parameters and
default edits are its leaves, the config its static structure) and a `Batch`, with edits,
deltas and captures, returning logits and the captured sites. `run`, `grad`, `generate`,
`sweep`, attribution, attention statistics and every method call it, so a wrapper made with
`dataclasses.replace` (a positional scheme's mask and ids, a mesh placement, default edits)
holds on every path.

Compiled programs are module-level `jax.jit`s over the model pytree: JAX keys them by static
structure (config, edit types, input shapes, the static arguments) in its bounded caches and
never holds parameters, so a new steering vector or a replaced model with the same config
reuses the program, while a new edit type, capture set or input shape compiles once more.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxinterp import models
from jaxinterp.converters.chat_template import render_chat
from jaxinterp.edits import Edit, compose
from jaxinterp.errors import ArgumentError, NonFiniteError
from jaxinterp.generate import Generation, Labeler, empty_cache, run_generation
from jaxinterp.models import Batch, KVCache, make_batch
from jaxinterp.models.batch import check_tokens
from jaxinterp.models.family import predicts_next_token
from jaxinterp.models.sites import resolve, segment_id

Array = jax.Array
Inputs = str | Sequence[str] | Batch | np.ndarray | Array


@struct.dataclass
class Run:
    """Result of `Model.run`: float32 logits [B, T, V], the last hidden states [B, T, D]
    (after the final norm), the captured sites, and the batch that ran."""

    logits: Array | None
    hidden: Array
    captured: dict[str, Array]
    batch: Batch
    finite: dict[str, Array] | None = None
    cache: KVCache | None = None

    def __getitem__(self, site: str) -> Array:
        return self.captured[site]


class _Tokenizer:
    """The `tokenizer` field: a tokenizer, or None with `load_tokenizer` set, loaded on first read."""

    def __get__(self, model: Model | None, owner: type | None = None) -> Any:
        if model is None:
            return None  # the field's default
        if model.__dict__.get("_tokenizer") is None and model.load_tokenizer is not None:
            model.__dict__["_tokenizer"] = model.load_tokenizer()
        return model.__dict__.get("_tokenizer")

    def __set__(self, model: Model, value: Any) -> None:
        model.__dict__["_tokenizer"] = value


class _Host:
    """Host-side parts of a model (tokenizer, processor, preparation, placement) in its pytree
    structure: they never enter a program, so all compare equal and never split a compile key."""

    def __init__(self, fields: dict[str, Any]):
        self.fields = fields

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Host)

    def __hash__(self) -> int:
        return 0


_HOST_FIELDS = ("_tokenizer", "load_tokenizer", "source", "processor", "prepare", "placement")


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A model: `config`, `params` (a pytree), `tokenizer`, and methods that run it.

    Inputs everywhere may be a string, a list of strings (right-padded), an int array of
    token ids [T] or [B, T], or a `Batch` (see `encode`).

    Attributes:
      config: the family config (static: it keys compiled programs).
      params: the parameter pytree.
      tokenizer: a transformers tokenizer (None: token ids only); with `load_tokenizer`
        given instead, loaded on first use.
      source: where the model came from (for messages).
      processor: turns images into pixel values (`jaxinterp.images.ImageProcessor`).
      edits: default edits, applied before the edits of every call (`with_edits`).
      prepare: batch preparations applied, in order, to every batch the model builds
        (a positional scheme's position ids).
      placement: puts batches on the model's devices (set by `jaxinterp.shard`).
    """

    config: Any
    params: Mapping[str, Any]
    tokenizer: Any = _Tokenizer()
    _: dataclasses.KW_ONLY
    source: str = ""
    load_tokenizer: Callable[[], Any] | None = None
    processor: Any = None
    edits: tuple[Edit, ...] = ()
    prepare: tuple[Callable[[Batch], Batch], ...] = ()
    placement: Callable[[Any], Any] | None = None

    def replace(self, **changes: Any) -> Model:
        """`dataclasses.replace` of this model (a wrapper: every path keeps what it changes); a
        tokenizer not loaded yet stays deferred."""
        return dataclasses.replace(self, **{"tokenizer": self.__dict__.get("_tokenizer"), **changes})

    def with_edits(self, edits: Edit | Sequence[Edit]) -> Model:
        """This model with `edits` applied by default, before the edits of every call."""
        return self.replace(edits=(*self.edits, *self.check_edits(edits)))

    @property
    def next_token(self) -> bool:
        """Whether logits at position t score token t + 1 (the objective; else token t itself)."""
        return predicts_next_token(self.config)

    def __repr__(self) -> str:
        cfg = self.config
        dtype = jax.tree.leaves(self.params)[0].dtype
        vocab = "" if cfg.vocab_size is None else f", vocab {cfg.vocab_size}"
        return (f"Model({self.source or cfg.family}: {cfg.family}, {cfg.num_layers} layers, {cfg.num_heads} heads, "
                f"hidden {cfg.hidden_size}{vocab}, {dtype})")

    def __treescope_repr__(self, path, subtree_renderer):
        """Renders in notebooks with treescope: config, parameter tree, tokenizer and source."""
        from treescope import repr_lib

        attributes = {"source": self.source, "config": self.config, "params": self.params,
                      "tokenizer": type(self.tokenizer).__name__ if self.tokenizer is not None else None}
        return repr_lib.render_object_constructor(type(self), attributes, path=path, subtree_renderer=subtree_renderer,
                                                  roundtrippable=False)

    # -- the program ---------------------------------------------------------------------

    def apply(
        self,
        batch: Batch,
        *,
        edits: Sequence[Edit] = (),
        deltas: Mapping[str, Array] | None = None,
        capture: Sequence[str] = (),
        cache: KVCache | None = None,
        decoding: bool = False,
        check_finite: bool = False,
        remat: bool = False,
        record_all: bool = False,
    ) -> Run:
        """The model's pure program: the model's default edits then `edits`, `deltas` added at
        their sites, the sites named in `capture` (exact names) recorded. Safe under `jit`,
        `grad` and `vmap`; nothing is checked or placed here (see `run` for the checked call).
        `cache`/`decoding` run a prefill into, or a decode step from, a KV cache."""
        output, captured = models.forward(self.config, self.params, batch, edits=(*self.edits, *edits), deltas=deltas,
                                          capture=capture, cache=cache, decoding=decoding, record_all=record_all,
                                          check_finite=check_finite, remat=remat)
        return Run(logits=output.logits, hidden=output.hidden, captured=captured, batch=batch, finite=output.finite,
                   cache=output.cache)

    # -- inputs ------------------------------------------------------------------------

    def encode(self, texts: str | Sequence[str], *, chat: bool = False, padding: str = "right") -> Batch:
        """Tokenizes text(s) into a padded `Batch`.

        Args:
          texts: one string or a list of strings.
          chat: wrap each text as a user turn of the tokenizer's chat template, ending with
            the assistant prompt.
          padding: `right` (for analysis) or `left` (for generation).
        """
        if self.tokenizer is None:
            raise ArgumentError(f"{self.source or 'model'}: has no tokenizer; pass token ids or a Batch instead of text")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ArgumentError("texts: expected a non-empty string or list of strings")
        if chat:
            texts = [
                render_chat(self.tokenizer, [{"role": "user", "content": t}], add_generation_prompt=True, source=self.source)
                for t in texts
            ]
        return self.pack([self.tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts], padding=padding)

    def pack(self, rows: Sequence[Sequence[int]], *, padding: str = "right", segments: Sequence[Sequence[int]] | None = None,
             pixels: Any = None) -> Batch:
        """Rows of token ids of different lengths as one padded `Batch` (with per-token segment ids and pixels)."""
        if padding not in ("left", "right"):
            raise ArgumentError(f"padding: expected 'left' or 'right', found {padding!r}")
        if min(len(row) for row in rows) == 0:
            raise ArgumentError("texts: an empty string has no tokens to run")
        width = max(len(row) for row in rows)
        segments = segments or [[segment_id("prompt")] * len(row) for row in rows]

        def padded(row, fill):
            extra = [fill] * (width - len(row))
            return extra + list(row) if padding == "left" else list(row) + extra

        return make_batch(
            np.array([padded(row, self.pad_token_id) for row in rows], np.int32),
            np.array([padded([True] * len(row), False) for row in rows], bool),
            segments=np.array([padded(seg, segment_id("pad")) for seg in segments], np.int32),
            pixels=pixels,
        )

    @property
    def pad_token_id(self) -> int:
        """Id used to fill padding (the tokenizer's pad token, else end-of-sequence, else 0)."""
        for candidate in (getattr(self.tokenizer, "pad_token_id", None), self.config.pad_token_id, *self.config.eos_token_ids):
            if candidate is not None:
                return int(candidate)
        return 0

    def batch(self, inputs: Inputs) -> Batch:
        """Any accepted input form as a `Batch`: checked by the family, prepared (`prepare`), and
        placed on the model's devices when sharded."""
        batch = self.as_batch(inputs)
        check_tokens(batch, self.config)
        self.config.check_batch(batch)
        for prepare in self.prepare:
            batch = prepare(batch)
        return self.place(batch)

    def place(self, tree: Any) -> Any:
        """Puts a batch (or any batch-major pytree) where a sharded model expects it."""
        return tree if self.placement is None else self.placement(tree)

    def as_batch(self, inputs: Inputs, *, chat: bool = False, padding: str = "right") -> Batch:
        """Any accepted input form as a `Batch`, not yet checked or prepared: text is encoded
        (`chat`, `padding` as in `encode`), token ids become a batch of real tokens."""
        if isinstance(inputs, Batch):
            return inputs
        if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)):
            return self.encode(inputs, chat=chat, padding=padding)
        if chat:
            raise ArgumentError("chat: wraps text prompts in the chat template; found token ids")
        tokens = np.asarray(inputs)
        if tokens.dtype.kind not in "iu" or tokens.ndim not in (1, 2) or tokens.size == 0:
            raise ArgumentError(
                f"inputs: expected text, a Batch, or integer token ids of shape [T] or [B, T]; "
                f"found {tokens.dtype} array of shape {tokens.shape}"
            )
        return make_batch(tokens)

    # -- sites -------------------------------------------------------------------------

    @functools.cached_property
    def sites(self) -> tuple[str, ...]:
        """Every site name of this model, in forward order."""
        with jax.ensure_compile_time_eval():  # bookkeeping: never staged into a caller's trace
            return tuple(self.site_shapes(models.example_batch(self.config)))

    def site_shapes(self, inputs: Inputs) -> dict[str, jax.ShapeDtypeStruct]:
        """Shape and dtype of every site for these inputs (computed abstractly, nothing runs)."""
        batch = self.batch(inputs)
        return dict(_site_shapes(self.config, self._params_spec, _spec(batch)))

    @functools.cached_property
    def _params_spec(self) -> tuple:
        """`_spec` of the parameters, once per model (every checked call asks for site shapes)."""
        return _spec(self.params)

    def resolve_capture(self, capture: str | Sequence[str]) -> tuple[str, ...]:
        """Site names matched by capture pattern(s); a pattern that matches nothing is an error."""
        return resolve((capture,) if isinstance(capture, str) else capture, self.sites, argument="capture")

    def check_edits(self, edits: Edit | Sequence[Edit] | None) -> tuple[Edit, ...]:
        """`edits` as a tuple, each checked against this model's sites and their shapes (the
        model's own default edits are not included: `apply` adds them)."""
        edits = compose(edits)
        with jax.ensure_compile_time_eval():  # bookkeeping: never staged into a caller's trace
            shapes = self.site_shapes(models.example_batch(self.config))
        for edit in edits:
            resolve(edit.sites, self.sites, argument=f"edit {type(edit).__name__}")
            edit.check(shapes)
        return edits

    # -- running -----------------------------------------------------------------------

    def __call__(self, inputs: Inputs, *, edits: Edit | Sequence[Edit] | None = ()) -> Array:
        """Float32 logits [B, T, V] of the (edited) model."""
        return self.run(inputs, edits=edits).logits

    def run(
        self,
        inputs: Inputs,
        *,
        capture: Sequence[str] = (),
        edits: Edit | Sequence[Edit] | None = (),
        deltas: Mapping[str, Array] | None = None,
        check_finite: bool = False,
        cache: KVCache | None = None,
    ) -> Run:
        """Runs the model, returning logits and the activations at the sites matching `capture`.

        Args:
          inputs: text(s), token ids or a `Batch`.
          capture: site patterns (globs such as `blocks.*.attn.probs`) to record.
          edits: one edit or a sequence, applied in order.
          deltas: site name -> array added at that site.
          check_finite: raise `NonFiniteError` naming the first site (in forward order) whose
            values hold a NaN or an infinity.
          cache: a `KVCache` (see `empty_cache`) holding earlier tokens: the inputs continue them
            (their positions must too) and attend every cached slot; `Run.cache` then holds
            the inputs as well. Shared prefixes are run once this way.
        """
        names = self.resolve_capture(capture)
        if deltas:
            resolve(deltas, self.sites, argument="deltas")
        batch = self.batch(inputs)
        run = _forward(self, batch, self.check_edits(edits), deltas, cache, capture=names, check_finite=check_finite)
        if check_finite:
            self._check_finite(run.finite, batch, "forward")
        return run

    def empty_cache(self, rows: int, size: int) -> KVCache:
        """An empty KV cache of `size` slots for `rows` sequences, in the parameters' dtype (for `run(cache=...)`)."""
        return empty_cache(self.config, rows, size, jax.tree.leaves(self.params)[0].dtype)

    def _check_finite(self, finite: Mapping[str, Array], batch: Batch, what: str) -> None:
        """Raises NonFiniteError naming the first site, in forward order, flagged non-finite."""
        bad = [name for name in self.site_shapes(batch) if name in finite and not bool(finite[name])]
        if bad:
            raise NonFiniteError(f"{what}: NaN or infinity first appears at site {bad[0]!r} "
                                 f"({len(bad)} site(s) affected)")

    def grad(
        self,
        fn: Callable[[Run], Array],
        inputs: Inputs,
        *,
        wrt: Sequence[str],
        edits: Edit | Sequence[Edit] | None = (),
        capture: Sequence[str] = (),
        check_finite: bool = False,
        remat: bool = False,
    ) -> tuple[Array, dict[str, Array]]:
        """Value and gradient of a scalar `fn(run)` with respect to the activations at `wrt`.

        `fn` receives the `Run` of the forward (logits, and the sites named in `capture`)
        and must return a scalar. The gradient at site s is d fn / d activation(s), taken
        through the rest of the forward; returned as {site name: array shaped like the site}.
        Pass the same `fn` object again to reuse the compiled program. `check_finite` raises
        `NonFiniteError` naming the first site whose forward values, or the first `wrt` site
        whose gradient, hold a NaN or an infinity. `remat` recomputes each block in the
        backward pass instead of keeping its activations (same values; for long sequences,
        peak memory of about one block instead of all of them).
        """
        wrt = (wrt,) if isinstance(wrt, str) else tuple(wrt)
        names = resolve(wrt, self.sites, argument="wrt")
        capture = self.resolve_capture(capture)
        batch, edits = self.batch(inputs), self.check_edits(edits)
        shapes = self.site_shapes(batch)
        zeros = {name: jnp.zeros(shapes[name].shape, shapes[name].dtype) for name in names}
        value, grads, finite = _value_and_grad(self, batch, edits, zeros, capture=capture, fn=fn,
                                               check_finite=check_finite, remat=remat)
        if check_finite:
            self._check_finite(finite, batch, "forward")
            self._check_finite({name: jnp.all(jnp.isfinite(g)) for name, g in grads.items()}, batch, "gradient")
        return value, grads

    def generate(
        self,
        prompts: Inputs,
        max_new_tokens: int = 32,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        stop: str | int | Sequence[str | int] = (),
        edits: Edit | Sequence[Edit] | None = (),
        stream: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
        chat: bool = False,
        capture: Sequence[str] = (),
        labeler: Labeler | None = None,
    ) -> Generation:
        """Generates continuations with a jitted KV-cache loop, edits active at every step.

        Args:
          prompts: text(s) (left-padded into one batch), token ids [T] or [B, T], or a left-padded `Batch`.
          max_new_tokens: tokens to generate per prompt at most.
          temperature: 0 for greedy decoding, else the softmax temperature.
          top_k, top_p: optional top-k and nucleus filtering when sampling.
          seed: sampling seed (same seed, same tokens).
          stop: extra stop token ids and/or stop strings (end-of-sequence always stops).
          edits: applied at prefill and at every decode step.
          stream: optional `fn(step, tokens [B], done [B])` called as each token is chosen.
          chat: wrap each prompt in the tokenizer's chat template as a user turn.
          capture: site patterns recorded at prefill and at every decode step.
          labeler: labels each generated token's segment and step inside the loop (default:
            segment `generated`, step 0); see `jaxinterp.generate.Labeler`.
        """
        return run_generation(
            self, prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
            stop=stop, edits=edits, stream=stream, chat=chat, capture=capture, labeler=labeler,
        )


def _flatten(model: Model):
    host = _Host({name: model.__dict__.get(name) for name in _HOST_FIELDS})
    return (model.params, model.edits), (model.config, host)


def _unflatten(static, children) -> Model:
    config, host = static
    model = object.__new__(Model)
    model.__dict__.update(host.fields, config=config, params=children[0], edits=children[1])
    return model


jax.tree_util.register_pytree_node(Model, _flatten, _unflatten)


@functools.partial(jax.jit, static_argnames=("capture", "check_finite"))
def _forward(model: Model, batch: Batch, edits, deltas, cache, *, capture, check_finite) -> Run:
    return model.apply(batch, edits=edits, deltas=deltas, capture=capture, cache=cache, check_finite=check_finite)


@functools.partial(jax.jit, static_argnames=("capture", "fn", "check_finite", "remat"))
def _value_and_grad(model: Model, batch: Batch, edits, deltas, *, capture, fn, check_finite, remat):
    def objective(deltas):
        run = model.apply(batch, edits=edits, deltas=deltas, capture=capture, check_finite=check_finite, remat=remat)
        return fn(run), run.finite

    (value, finite), grads = jax.value_and_grad(objective, has_aux=True)(deltas)
    return value, grads, finite


def _spec(tree: Any) -> tuple:
    """A hashable description of a pytree's structure, shapes and dtypes."""
    leaves, structure = jax.tree.flatten(tree)
    return structure, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


@functools.lru_cache(maxsize=256)
def _site_shapes(config: Any, params: tuple, batch: tuple) -> tuple[tuple[str, jax.ShapeDtypeStruct], ...]:
    """(site, shape) pairs in forward order for parameters and a batch described by `_spec`."""
    abstract = lambda spec: jax.tree.unflatten(  # noqa: E731
        spec[0], [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in spec[1]])
    order = []  # the forward's order: eval_shape hands dicts back with sorted keys

    def shapes(params, batch):
        captured = models.forward(config, params, batch, record_all=True)[1]
        order.extend(captured)
        return captured

    found = jax.eval_shape(shapes, abstract(params), abstract(batch))
    return tuple((name, found[name]) for name in order)
