"""Structurally valid step selection (Diffusion-CAM, spec step 2) on the library's LLaDA sampler.

Features must come from a forward whose hidden sequence holds the full image-token span. The
sampler's every denoising step runs the whole [prompt with image | answer region] sequence,
so each step qualifies; `step_batch` rebuilds the input of a chosen step from the sample's
history and checks the span:

- `decided` (default): the step at which the explained answer token was decided, whose input
  still masks it: the map explains the decision itself;
- `final`: the finished answer, unmasked, in one full forward (the reference's choice, forced
  there by prefix KV caching, where only that pass holds the image);
- an int s: the input of step s (all masks for s = 0).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxinterp.diffusion import DiffusionSample
from jaxinterp.errors import ArgumentError
from jaxinterp.models import Batch, make_batch, segment_id

STEPS = ("decided", "final")


def chosen_step(sample: DiffusionSample, row: int, answer_index: int, step: int | str) -> int:
    """The index s of the step whose input is used (its answer region is history[s - 1])."""
    steps = sample.history.shape[0]
    if step == "decided":
        return int(sample.decided_at[row, answer_index])
    if step == "final":
        return steps
    if isinstance(step, str) or not 0 <= step <= steps:
        raise ArgumentError(f"step: expected one of {STEPS} or a step index in [0, {steps}], found {step!r}")
    return int(step)


def step_batch(model, sample: DiffusionSample, row: int = 0, *, answer_index: int = 0,
               step: int | str = "decided") -> Batch:
    """The input of one denoising step of row `row` of `sample` ([1, P + L]; the answer region has
    segment `answer`), checked to hold the whole image span.

    Args:
      answer_index: the explained answer position (0 = the first answer token), for `decided`.
      step: `decided`, `final` or a step index (see the module docstring).
    """
    prompt, config = sample.prompt, model.config
    if not 0 <= row < prompt.tokens.shape[0]:
        raise ArgumentError(f"row: expected one of the sample's {prompt.tokens.shape[0]} rows, found {row}")
    if not 0 <= answer_index < sample.history.shape[2]:
        raise ArgumentError(f"answer_index: expected a position of the {sample.history.shape[2]}-token answer, "
                            f"found {answer_index}")
    s = chosen_step(sample, row, answer_index, step)
    length = sample.history.shape[2]
    answer = np.full(length, config.mask_token_id, np.int32) if s == 0 else sample.history[s - 1, row]
    prompt_positions = np.asarray(prompt.positions[row])
    batch = make_batch(
        np.concatenate([np.asarray(prompt.tokens[row]), answer])[None],
        np.concatenate([np.asarray(prompt.mask[row]), np.ones(length, bool)])[None],
        positions=np.concatenate([prompt_positions, prompt_positions[-1] + 1 + np.arange(length)])[None],
        segments=np.concatenate([np.asarray(prompt.segments[row]), np.full(length, segment_id("answer"))])[None],
        pixels=None if prompt.pixels is None else prompt.pixels[row:row + 1],
    )
    check_image_span(config, batch)
    return batch


def check_image_span(config, batch: Batch) -> None:
    """Raises unless the step's sequence holds every image token of its images (spec step 2)."""
    if batch.pixels is None or config.image_grid is None:
        raise ArgumentError("step: Diffusion-CAM needs a vision-language diffusion model and a prompt with an image")
    expected = batch.pixels.shape[1] * config.tokens_per_image
    found = int(jnp.sum(batch.tokens == config.image_token_id))
    if found != expected:
        raise ArgumentError(f"step: not structurally valid: its sequence holds {found} of the {expected} image tokens")
