"""The embedded default model against transformers' PyTorch model loaded from the same GGUF."""

from __future__ import annotations

import numpy as np
import torch

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a land far away, there lived"]


def test_logits_match_reference(smollm2, smollm2_reference):
    batch = smollm2.encode(PROMPTS)
    ours = np.asarray(smollm2(batch))
    with torch.no_grad():
        theirs = smollm2_reference(
            input_ids=torch.tensor(np.array(batch.tokens)).long(),
            attention_mask=torch.tensor(np.array(batch.mask)).long(),
        ).logits.numpy()
    mask = np.asarray(batch.mask)
    assert np.abs(ours[mask] - theirs[mask]).max() <= 1e-3


def test_greedy_continuation_matches_reference(smollm2, smollm2_reference):
    prompt = PROMPTS[0]
    ours = smollm2.generate(prompt, 24).tokens[0]
    ids = torch.as_tensor([smollm2.tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        theirs = smollm2_reference.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
    assert len(ours) == 24
    assert ours == theirs


def test_bfloat16_halves_memory_and_keeps_softmax_and_logits_float32(smollm2):
    import jax
    import jax.numpy as jnp

    import jaxinterp

    half = jaxinterp.load("smollm2", dtype="bfloat16", progress=False)
    size = lambda m: sum(x.nbytes for x in jax.tree.leaves(m.params))  # noqa: E731
    assert size(half) * 2 == size(smollm2)
    assert {x.dtype for x in jax.tree.leaves(half.params)} == {jnp.dtype(jnp.bfloat16)}
    run = half.run(PROMPTS[0], capture=["blocks.3.attn.probs", "blocks.3.resid_post"])
    assert run.logits.dtype == jnp.float32 and run["blocks.3.attn.probs"].dtype == jnp.float32
    assert run["blocks.3.resid_post"].dtype == jnp.bfloat16
    full = np.asarray(smollm2(PROMPTS[0]))
    assert np.argmax(np.asarray(run.logits)[0, -1]) == np.argmax(full[0, -1])
    assert np.abs(np.asarray(run.logits) - full).max() < 1.5
