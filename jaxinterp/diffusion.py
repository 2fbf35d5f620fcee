"""Masked-diffusion sampling (LLaDA): iterative unmasking with remasking strategies.

The answer region starts as mask tokens and is filled block by block (semi-autoregressive
generation): each of the `steps // num_blocks` steps of a block runs the full bidirectional
forward (with the call's edits), predicts every masked position, and keeps the
`schedule[i]` predictions with the highest confidence inside the current block (LLaDA's
`low_confidence` remasking; `random` draws the confidences). A kept token is final. With
`cfg_scale > 0`, classifier-free guidance mixes the logits with those of a copy whose prompt
is masked: `un + (cfg_scale + 1) * (cond - un)`. Temperature adds Gumbel noise to the
logits before the argmax (LLaDA's `add_gumbel_noise`, in log space). All steps run in one
jitted `lax.scan` with static shapes; the history of every step is returned, so methods can
tell at which step each token was decided.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.generate import left_padded_prompt
from jaxinterp.errors import ArgumentError
from jaxinterp.models import Batch
from jaxinterp.models.sites import segment_id

Array = jax.Array
REMASKING = ("low_confidence", "random")


@dataclasses.dataclass
class DiffusionSample:
    """What `sample` returns.

    Attributes:
      texts: decoded answer of each prompt (cut at the first end-of-sequence token).
      tokens: the answer's token ids per prompt, cut likewise.
      history: [steps, B, L] the answer region after each step (mask ids where undecided).
      decided_at: [B, L] the step at which each answer position was unmasked.
      prompt: the left-padded prompt `Batch`.
    """

    texts: list[str]
    tokens: list[list[int]]
    history: np.ndarray
    decided_at: np.ndarray
    prompt: Batch


def transfer_schedule(block_length: int, steps_per_block: int) -> np.ndarray:
    """Tokens unmasked at each step of a block: equal shares, the remainder to the first steps
    (LLaDA's `get_num_transfer_tokens` for a fully masked block)."""
    base, remainder = divmod(block_length, steps_per_block)
    return base + (np.arange(steps_per_block) < remainder).astype(np.int32)


def _top_k_mask(confidence: Array, k: Array) -> Array:
    """[B, L] bool: the k highest-confidence positions of each row."""
    ranks = jnp.argsort(jnp.argsort(-confidence, axis=-1), axis=-1)
    return ranks < k


@functools.partial(jax.jit, static_argnames=("gen_length", "block_length", "steps", "remasking", "guided"))
def _sample_loop(model, prompt: Batch, edits, key, temperature, cfg_scale, *,
                 gen_length: int, block_length: int, steps: int, remasking: str, guided: bool):
    batch_size, prompt_length = prompt.tokens.shape
    mask_id = model.config.mask_token_id
    steps_per_block = steps // (gen_length // block_length)
    schedule = jnp.asarray(transfer_schedule(block_length, steps_per_block))
    full = lambda value, dtype: jnp.full((batch_size, gen_length), value, dtype)  # noqa: E731
    base = Batch(
        tokens=jnp.concatenate([prompt.tokens, full(mask_id, jnp.int32)], axis=1),
        mask=jnp.concatenate([prompt.mask, full(True, bool)], axis=1),
        positions=jnp.concatenate(
            [prompt.positions, prompt.positions[:, -1:] + 1 + jnp.arange(gen_length)[None]], axis=1),
        segments=jnp.concatenate([prompt.segments, full(segment_id("generated"), jnp.int32)], axis=1),
        steps=jnp.concatenate([prompt.steps, full(0, jnp.int32)], axis=1),
        pixels=prompt.pixels,
    )
    in_prompt = jnp.arange(prompt_length + gen_length) < prompt_length

    def logits_of(tokens):
        if not guided:
            return model.apply(base.replace(tokens=tokens), edits=edits).logits
        unconditional = jnp.where(in_prompt[None], mask_id, tokens)
        both = base.replace(tokens=jnp.concatenate([tokens, unconditional]),
                            **{f: jnp.concatenate([getattr(base, f)] * 2) for f in ("mask", "positions", "segments", "steps")},
                            pixels=None if base.pixels is None else jnp.concatenate([base.pixels] * 2))
        cond, uncond = jnp.split(model.apply(both, edits=edits).logits, 2)
        return uncond + (cfg_scale + 1.0) * (cond - uncond)

    def step(tokens, index):
        logits = logits_of(tokens)[:, prompt_length:]
        noise_key, confidence_key = jax.random.split(jax.random.fold_in(key, index))
        gumbel = jax.random.gumbel(noise_key, logits.shape)
        guess = jnp.argmax(logits + temperature * gumbel, axis=-1).astype(jnp.int32)
        if remasking == "low_confidence":
            probs = jax.nn.softmax(logits, axis=-1)
            confidence = jnp.take_along_axis(probs, guess[..., None], axis=-1)[..., 0]
        else:
            confidence = jax.random.uniform(confidence_key, guess.shape)
        answer = tokens[:, prompt_length:]
        block_end = (index // steps_per_block + 1) * block_length
        open_ = (answer == mask_id) & (jnp.arange(gen_length) < block_end)[None]
        confidence = jnp.where(open_, confidence, -jnp.inf)
        chosen = _top_k_mask(confidence, schedule[index % steps_per_block]) & open_
        answer = jnp.where(chosen, guess, answer)
        return tokens.at[:, prompt_length:].set(answer), answer

    _, history = jax.lax.scan(step, base.tokens, jnp.arange(steps))
    return history


def _check(model, gen_length, block_length, steps, remasking, temperature, cfg_scale) -> None:
    config = model.config
    if config.causal or model.next_token:
        raise ArgumentError("model: masked-diffusion sampling needs a bidirectional masked-token model "
                            f"(config.causal=False, objective 'masked_token'); found causal={config.causal}, "
                            f"objective {config.objective!r}")
    if config.mask_token_id is None:
        raise ArgumentError("model: config.mask_token_id is not set; a masked-diffusion LM needs its mask token")
    if gen_length < 1 or block_length < 1 or gen_length % block_length:
        raise ArgumentError(f"block_length: expected a positive divisor of gen_length={gen_length}, found {block_length}")
    blocks = gen_length // block_length
    if steps < blocks or steps % blocks:
        raise ArgumentError(f"steps: expected a positive multiple of the number of blocks ({blocks}), found {steps}")
    if remasking not in REMASKING:
        raise ArgumentError(f"remasking: expected one of {REMASKING}, found {remasking!r}")
    if not temperature >= 0 or not cfg_scale >= 0:
        raise ArgumentError(f"temperature and cfg_scale: expected >= 0, found {temperature!r} and {cfg_scale!r}")


def sample(
    model,
    prompts,
    *,
    gen_length: int = 64,
    steps: int = 64,
    block_length: int = 32,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    seed: int = 0,
    edits=(),
    chat: bool = False,
) -> DiffusionSample:
    """Samples answers from a masked-diffusion LM (see the module docstring).

    Args:
      model: a `Model` with a bidirectional config and a `mask_token_id`.
      prompts: text(s) (left-padded into one batch) or a left-padded `Batch` (may carry pixels).
      gen_length: answer length in tokens; block_length: tokens per semi-autoregressive block.
      steps: denoising steps in total (a multiple of the number of blocks).
      temperature: Gumbel-noise scale (0: argmax); cfg_scale: classifier-free guidance (0: off).
      remasking: `low_confidence` or `random`.
      seed: PRNG seed of noise and random remasking.
      edits: applied in the forward of every denoising step.
      chat: wrap each text prompt in the tokenizer's chat template.
    """
    _check(model, gen_length, block_length, steps, remasking, temperature, cfg_scale)
    prompt = left_padded_prompt(model, prompts, chat=chat, bucket=1, what="sample")
    needed = int(jnp.max(prompt.positions[:, -1])) + 1 + gen_length
    if needed > model.config.max_position_embeddings:
        raise ArgumentError(f"gen_length: prompt plus answer ({needed} tokens) exceeds the model's context "
                            f"of {model.config.max_position_embeddings}")
    history = _sample_loop(
        model, prompt, model.check_edits(edits), jax.random.key(seed), jnp.float32(temperature),
        jnp.float32(cfg_scale), gen_length=gen_length, block_length=block_length, steps=steps,
        remasking=remasking, guided=cfg_scale > 0,
    )
    history = np.asarray(history)
    decided_at = np.argmax(history != model.config.mask_token_id, axis=0)
    stops = set(model.config.eos_token_ids) | ({model.tokenizer.eos_token_id} if model.tokenizer is not None else set())
    tokens = []
    for row in history[-1].tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        tokens.append(row[:cut])
    texts = [model.tokenizer.decode(t, skip_special_tokens=True) if model.tokenizer is not None else "" for t in tokens]
    return DiffusionSample(texts=texts, tokens=tokens, history=history, decided_at=decided_at, prompt=prompt)
