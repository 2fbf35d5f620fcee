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
