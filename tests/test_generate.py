"""Generation: padded batches, edits at every decode step, sampling, argument errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxinterp as ji

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write a haiku about the sea and the wind at night.",
    "Hi",
]


def _reference_generate(reference, tokenizer, prompts, max_new_tokens):
    """transformers' greedy generate on a left-padded batch, rows cut after their first stop token."""
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = reference.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
    rows = []
    for row in out[:, encoded["input_ids"].shape[1]:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        rows.append(row)
    return rows


def test_padded_batch_greedy_equals_transformers(smollm2, smollm2_reference):
    prompts = [smollm2.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                     add_generation_prompt=True) for q in QUESTIONS]
    ours = smollm2.generate(QUESTIONS, 32, chat=True)
    assert len({len(smollm2.tokenizer(p)["input_ids"]) for p in prompts}) == 4  # really different lengths
    assert ours.tokens == _reference_generate(smollm2_reference, smollm2.tokenizer, prompts, 32)


def _recompute_greedy(model, prompt_ids, steps, edits):
    """Reference: re-run the whole edited forward on the full sequence at every step."""
    ids = list(prompt_ids)
    for _ in range(steps):
        ids.append(int(np.argmax(np.asarray(model(np.array([ids], np.int32), edits=edits))[0, -1])))
    return ids[len(prompt_ids):]


@pytest.mark.slow  # about 30 s on 2 cores
def test_edits_apply_at_every_decode_step_with_absolute_positions(smollm2):
    prompts = ["The tallest mountain in the world is", "My favourite food is"]
    edits = (
        ji.ScaleHead(layer=5, head=4, scale=0.0),
        ji.AddToResidual(layer=8, vector=jnp.full((smollm2.config.hidden_size,), 0.8), positions=jnp.array([12, 13])),
    )
    generated = smollm2.generate(prompts, 10, edits=edits, stop=[])
    plain = smollm2.generate(prompts, 10)
    assert generated.tokens != plain.tokens  # the edits change the continuation
    for prompt, tokens in zip(prompts, generated.tokens):
        ids = smollm2.tokenizer(prompt)["input_ids"]
        assert tokens == _recompute_greedy(smollm2, ids, len(tokens), edits)


def test_edit_context_in_decode_steps(smollm2):
    seen = []

    def record(x, ctx, _):
        seen.append((ctx.decoding, ctx.positions.shape, ctx.key_segments.shape))
        generated = ctx.segment_mask("generated")
        return x + 0.0 * generated[..., None, None].astype(x.dtype)

    edit = ji.FunctionEdit(patterns=("blocks.0.attn.head_out",), fn=record)
    out = smollm2.generate("Hello", 4, edits=edit, capture="blocks.0.attn.probs")
    assert seen[0][0] is False and len(seen) >= 2 and all(decoding for decoding, _, _ in seen[1:])
    assert seen[-1][1][1] == 1  # one query per row in a decode step
    steps = out.captured_steps["blocks.0.attn.probs"]
    assert steps.shape[0] == len(out.tokens[0]) and steps.shape[3] == 1
    np.testing.assert_allclose(np.asarray(steps).sum(-1), 1.0, atol=1e-5)


def test_sampling_is_seeded(smollm2):
    kwargs = dict(temperature=0.9, top_k=40, top_p=0.95)
    a = smollm2.generate("Once upon a time", 16, seed=3, **kwargs).tokens
    b = smollm2.generate("Once upon a time", 16, seed=3, **kwargs).tokens
    c = smollm2.generate("Once upon a time", 16, seed=4, **kwargs).tokens
    assert a == b
    assert a != c


def test_stop_strings_and_streaming(smollm2):
    streamed = []
    out = smollm2.generate("Count: one, two, three,", 12, stop=[" six"], stream=lambda s, t, d: streamed.append(int(t[0])))
    assert " six" not in out.texts[0]
    assert streamed[: len(out.tokens[0])] == out.tokens[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=4, temperature=-0.5), "temperature"),
    (dict(max_new_tokens=4, temperature=1.0, top_p=1.5), "top_p"),
    (dict(max_new_tokens=4, temperature=1.0, top_p=0.0), "top_p"),
    (dict(max_new_tokens=9000), "context"),
])
def test_bad_arguments_are_clear(smollm2, kwargs, message):
    with pytest.raises(ji.ArgumentError, match=message):
        smollm2.generate("Hello", **kwargs)


@pytest.mark.slow  # about 30 s on 2 cores
def test_labeler_steps_reach_edits_at_every_step(smollm2):
    """An edit whose effect depends on the labeler's step index gives the same tokens as a
    recompute that passes those step indices explicitly, and differs from running unlabelled."""
    from flax import struct

    comma = smollm2.tokenizer(",", add_special_tokens=False)["input_ids"][0]

    @struct.dataclass
    class CommaSteps(ji.Labeler):
        """A new step after every comma."""

        def init(self, prompt):
            return jnp.zeros(prompt.tokens.shape[0], jnp.int32)

        def label(self, state, tokens):
            segment = jnp.full(tokens.shape, ji.models.segment_id("thinking"), jnp.int32)
            return state + (tokens == comma), segment, state

    vector = jax.random.normal(jax.random.key(3), (smollm2.config.hidden_size,)) * 2.0
    edit = ji.FunctionEdit(patterns=("blocks.2.resid_post",),
                           fn=lambda x, ctx, v: x + ctx.steps[..., None].astype(x.dtype) * v, args=vector)
    prompt = "Fruits: apples, pears, plums"
    out = smollm2.generate(prompt, 10, edits=edit, labeler=CommaSteps())
    unlabelled = smollm2.generate(prompt, 10, edits=edit)
    ids = smollm2.tokenizer(prompt)["input_ids"]
    tokens, steps, state = list(ids), [0] * len(ids), 0
    for _ in range(len(out.tokens[0])):
        logits = smollm2(ji.make_batch(np.array([tokens], np.int32), steps=np.array([steps])), edits=edit)
        token = int(np.argmax(np.asarray(logits)[0, -1]))
        tokens.append(token)
        steps.append(state)
        state += token == comma
    assert out.tokens[0] == tokens[len(ids):]
    assert comma in out.tokens[0][:-1] and out.tokens != unlabelled.tokens
