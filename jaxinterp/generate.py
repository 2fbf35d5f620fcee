"""Generation under edits: a jitted KV-cache decode loop with static shapes.

Prompts are left-padded into one batch, prefilled in one forward that writes the cache,
then decoded one token per `lax.while_loop` iteration. The same edits run at prefill and
at every decode step; their context tells them the absolute position of each query,
whether they run in a decode step (`ctx.decoding`), and the segment of every token
(`prompt` or `generated`). Sampling is greedy at temperature 0, else softmax sampling with
optional top-k / top-p, keyed by `seed` and the step index so that runs are reproducible.

Stop conditions: end-of-sequence ids of the model, extra `stop` token ids, and `stop`
strings. A stop string that is a single token halts its row inside the loop; a longer one
cuts the returned text and tokens after the fact (the row decodes on until another stop).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxinterp.errors import ArgumentError
from jaxinterp.host import to_host
from jaxinterp.models import Batch, KVCache
from jaxinterp.models.sites import segment_id

Array = jax.Array
PROMPT_BUCKET = 8  # prompt lengths are padded up to a multiple of this, to reuse compiled programs
CACHE_BUCKET = 32  # cache sizes likewise


@dataclasses.dataclass
class Generation:
    """What `Model.generate` returns.

    Attributes:
      texts: decoded continuation of each prompt (special tokens removed, cut at stop strings).
      tokens: per prompt, the generated token ids (including a final stop token, if any).
      prompt: the left-padded prompt `Batch` that was run.
      captured_prefill: sites captured during prefill (site -> array over the prompt).
      captured_steps: sites captured at each decode step (site -> [steps, ...] array); step i
        is the forward that read generated token i.
    """

    texts: list[str]
    tokens: list[list[int]]
    prompt: Batch
    captured_prefill: dict[str, Array]
    captured_steps: dict[str, Array]


@struct.dataclass
class Labeler:
    """Labels every generated token inside the jitted loop: its segment id and step index.

    Subclass as a `flax.struct` dataclass (numbers as leaves, structure static). `init`
    builds a state from the prompt; `label` gets the state and the token ids [B] just
    chosen and returns (state, segment ids [B], step indices [B]) of those tokens, which
    then travel in the batch, the cache and every edit's context. The default labels every
    token `generated`, step 0.
    """

    def init(self, prompt: Batch) -> Any:
        return ()

    def label(self, state: Any, tokens: Array) -> tuple[Any, Array, Array]:
        return state, jnp.full(tokens.shape, segment_id("generated"), jnp.int32), jnp.zeros(tokens.shape, jnp.int32)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Static sampling choices (part of the compile key); numbers travel as arrays."""

    greedy: bool
    top_k: int | None
    nucleus: bool


def _choose(logits: Array, key: Array, sampling: Sampling, temperature: Array, top_p: Array) -> Array:
    """Next token ids [B] from float32 logits [B, V]."""
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if sampling.top_k is not None:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.nucleus:
        # the smallest set of most likely tokens whose mass reaches top_p: keep a token when the
        # mass of the tokens ranked above it is still below top_p
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        kept = jnp.sum(jnp.cumsum(probs, axis=-1) - probs < top_p, axis=-1)
        cutoff = jnp.take_along_axis(ordered, (kept - 1)[:, None], axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


# The compiled loop calls `_emit`, which forwards to the callback of the generate call in
# progress; keeping the callback out of the compile key means a new callback never recompiles.
_STREAM: dict[str, Callable | None] = {"fn": None}


def _emit(step, tokens, done):
    if _STREAM["fn"] is not None:
        _STREAM["fn"](int(step), np.asarray(tokens), np.asarray(done))


def empty_cache(config: Any, rows: int, size: int, dtype: Any) -> KVCache:
    """An empty KV cache of `size` slots for `rows` sequences of a decoder `config`."""
    return KVCache.empty(layers=config.num_layers, batch=rows, size=size, kv_heads=config.num_kv_heads,
                         head_dim=config.head_dim, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("max_new_tokens", "cache_size", "sampling", "capture", "streaming"))
def decode_loop(
    model: Any,
    prompt: Batch,
    edits: tuple,
    labeler: Labeler,
    key: Array,
    temperature: Array,
    top_p: Array,
    stop_ids: Array,
    pad_id: Array,
    *,
    max_new_tokens: int,
    cache_size: int,
    sampling: Sampling,
    capture: tuple[str, ...],
    streaming: bool,
):
    """Prefill + decode of `model` (a `Model`, through its program `apply`); returns (tokens [B, N],
    steps run, prefill captures, per-step captures)."""
    batch_size = prompt.tokens.shape[0]
    cache = empty_cache(model.config, batch_size, cache_size, jax.tree.leaves(model.params)[0].dtype)
    out = model.apply(prompt, edits=edits, cache=cache, capture=capture)
    prefill_captured = out.captured

    def step_forward(cache, tokens, positions, real, segments, steps):
        step_batch = Batch(
            tokens=tokens[:, None], mask=real[:, None], positions=positions[:, None],
            segments=segments[:, None], steps=steps[:, None],
        )
        run = model.apply(step_batch, edits=edits, cache=cache, capture=capture, decoding=True)
        return run, run.captured

    zeros = jnp.zeros(batch_size, jnp.int32)
    step_shapes = jax.eval_shape(
        lambda c: step_forward(c, zeros, prompt.positions[:, -1], prompt.mask[:, -1], zeros, zeros)[1], out.cache
    )
    buffers = {name: jnp.zeros((max_new_tokens, *s.shape), s.dtype) for name, s in step_shapes.items()}

    def cond(state):
        step, _, _, _, _, done, _, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, cache, logits, positions, tokens, done, buffers, labels = state
        token = _choose(logits, jax.random.fold_in(key, step), sampling, temperature, top_p)
        token = jnp.where(done, pad_id, token)
        tokens = tokens.at[:, step].set(token)
        if streaming:
            jax.debug.callback(_emit, step, token, done, ordered=True)
        real = ~done
        done = done | jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
        labels, segments, steps = labeler.label(labels, token)
        out, captured = step_forward(cache, token, positions, real, segments, steps)
        buffers = {name: buffers[name].at[step].set(captured[name]) for name in buffers}
        return step + 1, out.cache, out.logits[:, -1], positions + 1, tokens, done, buffers, labels

    state = (
        jnp.zeros((), jnp.int32), out.cache, out.logits[:, -1], prompt.positions[:, -1] + 1,
        jnp.full((batch_size, max_new_tokens), pad_id, jnp.int32), jnp.zeros(batch_size, bool), buffers,
        labeler.init(prompt),
    )
    steps, _, _, _, tokens, _, buffers, _ = jax.lax.while_loop(cond, body, state)
    return tokens, steps, prefill_captured, buffers


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def left_padded_prompt(model: Any, prompts: Any, *, chat: bool, bucket: int, what: str) -> Batch:
    """Prompts as the left-padded `Batch` a sampler runs: text encoded left-padded, token ids
    taken as they are (every column real), a `Batch` checked to be left-padded; padded up to a multiple of `bucket` columns (to reuse compiled
    programs), then checked, prepared and placed by `model.batch`."""
    if isinstance(prompts, Batch):
        if not bool(jnp.all(to_host(prompts.mask[:, -1]))):
            raise ArgumentError(f"prompts: a Batch given to {what} must be left-padded (last column all real tokens)")
        prompt = prompts
    else:
        prompt = model.as_batch(prompts, chat=chat, padding="left")
    return model.batch(left_pad(prompt, _round_up(prompt.tokens.shape[1], bucket), model.pad_token_id))


def check_arguments(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
                    vocab_size: int) -> None:
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ArgumentError(f"max_new_tokens: expected a positive integer, found {max_new_tokens!r}")
    if not temperature >= 0:
        raise ArgumentError(f"temperature: expected >= 0, found {temperature!r}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= vocab_size):
        raise ArgumentError(f"top_k: expected an integer in 1..{vocab_size} (the vocabulary) or None, found {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ArgumentError(f"top_p: expected a number in (0, 1], found {top_p!r}")


def left_pad(prompt: Batch, length: int, pad_id: int) -> Batch:
    """`prompt` left-padded to `length` columns (pads are masked and sit at position 0)."""
    extra = length - prompt.tokens.shape[1]
    if extra == 0:
        return prompt
    pad = lambda x, value: jnp.pad(x, ((0, 0), (extra, 0)), constant_values=value)  # noqa: E731
    return Batch(
        tokens=pad(prompt.tokens, pad_id), mask=pad(prompt.mask, False), positions=pad(prompt.positions, 0),
        segments=pad(prompt.segments, segment_id("pad")), steps=pad(prompt.steps, 0),
        embeds=None if prompt.embeds is None else jnp.pad(prompt.embeds, ((0, 0), (extra, 0), (0, 0))),
        embeds_mask=None if prompt.embeds_mask is None else pad(prompt.embeds_mask, False),
        pixels=prompt.pixels,
    )


def stop_tokens(tokenizer: Any, config: Any, stop: Sequence[str | int]) -> tuple[list[int], list[str]]:
    """Split `stop` into token ids (halting inside the loop) and multi-token strings (cut afterwards)."""
    ids = [int(i) for i in config.eos_token_ids]
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    strings = []
    for item in stop:
        if isinstance(item, (int, np.integer)):
            if not 0 <= item < config.vocab_size:
                raise ArgumentError(f"stop: expected token ids in [0, {config.vocab_size}), found {item}")
            ids.append(int(item))
            continue
        if not isinstance(item, str) or not item:
            raise ArgumentError(f"stop: expected non-empty strings or token ids, found {item!r} "
                                "(an empty string would match at once)")
        encoded = tokenizer(item, add_special_tokens=False)["input_ids"] if tokenizer is not None else []
        if len(encoded) == 1:
            ids.append(encoded[0])
        strings.append(item)
    return sorted(set(ids)), strings


def finish(tokenizer: Any, tokens: np.ndarray, steps: int, stop_ids: list[int], stop_strings: list[str]):
    """Per-row token lists (up to and including a stop token) and texts cut at stop strings."""
    rows, texts = [], []
    for row in tokens[:, :steps].tolist():
        for i, token in enumerate(row):
            if token in stop_ids:
                row = row[: i + 1]
                break
        text = tokenizer.decode(row, skip_special_tokens=True) if tokenizer is not None else ""
        hits = [s for s in stop_strings if s in text]
        if hits:
            first = min(hits, key=text.index)
            text = text[: text.index(first)]
            # keep the tokens up to the one that completes the stop string
            row = next(row[:k] for k in range(1, len(row) + 1)
                       if first in tokenizer.decode(row[:k], skip_special_tokens=True))
        rows.append(row)
        texts.append(text)
    return rows, texts


def run_generation(model, prompts, max_new_tokens, *, temperature, top_k, top_p, seed, stop, edits, stream,
                   chat, capture, labeler) -> Generation:
    """Implementation of `Model.generate` (see there)."""
    check_arguments(max_new_tokens, temperature, top_k, top_p, model.config.vocab_size)
    config = model.config
    prompt = left_padded_prompt(model, prompts, chat=chat, bucket=PROMPT_BUCKET, what="generate")
    pad_id = model.pad_token_id
    needed = int(jnp.max(to_host(prompt.positions[:, -1]))) + 1 + max_new_tokens
    if needed > config.max_position_embeddings:
        raise ArgumentError(
            f"max_new_tokens: prompt ({needed - max_new_tokens} tokens) plus max_new_tokens ({max_new_tokens}) "
            f"exceeds the model's context of {config.max_position_embeddings} tokens"
        )
    stop_ids, stop_strings = stop_tokens(model.tokenizer, config, [stop] if isinstance(stop, (str, int, np.integer)) else list(stop))
    sampling = Sampling(greedy=temperature == 0, top_k=top_k, nucleus=top_p is not None and top_p < 1)
    cache_size = _round_up(prompt.tokens.shape[1] + max_new_tokens, CACHE_BUCKET)
    capture = model.resolve_capture(capture)
    _STREAM["fn"] = stream
    try:
        tokens, steps, prefill, per_step = decode_loop(
            model, prompt, model.check_edits(edits), labeler or Labeler(), jax.random.key(seed),
            jnp.float32(max(temperature, 1e-6)), jnp.float32(1.0 if top_p is None else top_p),
            jnp.asarray(stop_ids or [-1], jnp.int32), jnp.int32(pad_id),
            max_new_tokens=max_new_tokens, cache_size=cache_size, sampling=sampling,
            capture=capture, streaming=stream is not None,
        )
        steps = int(to_host(steps))
    finally:
        _STREAM["fn"] = None
    rows, texts = finish(model.tokenizer, to_host(tokens), steps, stop_ids, stop_strings)
    per_step = {name: value[:steps] for name, value in per_step.items()}
    return Generation(texts=texts, tokens=rows, prompt=prompt, captured_prefill=prefill, captured_steps=per_step)


def stream_printer(tokenizer: Any) -> Callable[[int, np.ndarray, np.ndarray], None]:
    """A `stream` callback that prints row 0's text as it is generated."""
    def show(step, tokens, done):
        if not done[0]:
            print(tokenizer.decode([int(tokens[0])], skip_special_tokens=True), end="", flush=True)

    return show
