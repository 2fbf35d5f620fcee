"""Prompts with images, as one padded `Batch` whose tokens carry their segments.

Each `<image>` placeholder of a prompt (prepended, one per image, when the prompt has none)
becomes `tokens_per_image` image tokens; the images become pixel values through the model's
image processor. Every token is labelled from the character span it starts in: `system`
(the system text), `question` (the user's text), `answer` (a given assistant answer, for
teacher forcing), `image` (image tokens), `prompt` (template markup). Methods then find the
image span, the question or the answer from data, never from hard-coded offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxinterp.converters.chat_template import render_chat
from jaxinterp.errors import ArgumentError
from jaxinterp.model import Model
from jaxinterp.models import Batch
from jaxinterp.models.sites import segment_id

IMAGE = "<image>"


def _spans(text: str, parts: Sequence[tuple[str, str | None]]) -> list[tuple[int, int, str]]:
    """Character spans of the given parts, found in order in `text`."""
    spans, start = [], 0
    for segment, part in parts:
        if not part:
            continue
        at = text.find(part, start)
        if at < 0:
            raise ArgumentError(f"chat template: the rendered prompt does not contain the {segment} text {part[:40]!r}")
        spans.append((at, at + len(part), segment))
        start = at + len(part)
    return spans


def _row(model: Model, question: str, images: int, system: str | None, answer: str | None, chat: bool):
    """Token ids and segment ids of one prompt."""
    if images and IMAGE not in question:
        question = IMAGE * images + "\n" + question
    if question.count(IMAGE) != images:
        raise ArgumentError(f"prompts: a prompt has {question.count(IMAGE)} {IMAGE} placeholder(s) for {images} image(s)")
    tokenizer, config = model.tokenizer, model.config
    if images:
        image_text = tokenizer.convert_ids_to_tokens(config.image_token_id) * config.tokens_per_image
        question = question.replace(IMAGE, image_text)
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        messages += [{"role": "assistant", "content": answer}] if answer is not None else []
        text = render_chat(tokenizer, messages, add_generation_prompt=answer is None, source=model.source)
    else:
        text = "\n".join(p for p in (system, question) if p) + (answer or "")
    spans = _spans(text, [("system", system), ("question", question), ("answer", answer)])
    encoded = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
    image_id = config.image_token_id
    segments = []
    for token, (start, _) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        name = next((seg for lo, hi, seg in spans if lo <= start < hi), "prompt")
        segments.append(segment_id("image" if token == image_id else name))
    return encoded["input_ids"], segments


def encode(
    model: Model,
    prompts: str | Sequence[str],
    images: Any = None,
    *,
    system: str | None = None,
    answers: str | Sequence[str] | None = None,
    chat: bool = True,
    padding: str = "right",
) -> Batch:
    """Prompts (and their images) as a padded `Batch` with segments and pixels.

    Args:
      model: a vision-language model with a tokenizer and an image processor (or a text model,
        for segment-labelled text prompts without images).
      prompts: one prompt or a list; `<image>` marks where an image goes.
      images: for one prompt, an image or a list of images; for a list of prompts, one entry
        (an image or a list) per prompt; PIL images or arrays; the same count per prompt.
      system: optional system text (segment `system`).
      answers: optional assistant answers appended for teacher forcing (segment `answer`).
      chat: render through the tokenizer's chat template.
      padding: `right` for analysis, `left` for generation.
    """
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    if answers is not None:
        answers = [answers] if isinstance(answers, str) else list(answers)
        if len(answers) != len(prompts):
            raise ArgumentError(f"answers: expected one per prompt ({len(prompts)}), found {len(answers)}")
    if images is None:
        per_row = [[] for _ in prompts]
    elif single:
        per_row = [list(images) if isinstance(images, (list, tuple)) else [images]]
    elif len(images) != len(prompts):
        raise ArgumentError(f"images: expected an entry for each of {len(prompts)} prompts, found {len(images)}")
    else:
        per_row = [list(item) if isinstance(item, (list, tuple)) else [item] for item in images]
    counts = {len(row) for row in per_row}
    if len(counts) > 1:
        raise ArgumentError(f"images: every prompt needs the same number of images, found {sorted(counts)}")
    count = counts.pop()
    if count and model.processor is None:
        raise ArgumentError(f"{model.source or 'model'}: has no image processor; pass pixel values in a Batch")
    rows = [_row(model, q, count, system, None if answers is None else answers[i], chat) for i, q in enumerate(prompts)]
    pixels = None
    if count:
        pixels = np.stack([model.processor(row) for row in per_row])
    return model.batch(model.pack([r[0] for r in rows], padding=padding, segments=[r[1] for r in rows], pixels=pixels))
