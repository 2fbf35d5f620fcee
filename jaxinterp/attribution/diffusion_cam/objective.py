"""Diffusion-CAM's default objective: a contrast between two words of the answer (spec step 4).

Target t = the first token of the answer's word #1 (its second word; word #0 when the answer
has one word), distractor t' = the first token of the first other word. An answer of one word
has no other word; the distractor is then the last token before the answer (an inferred
choice: the reference always generates 64 tokens). Words start at the answer's first token
and at every token that the decoded text continues with a space (special tokens decode to
nothing and start no word); a tokenizer-less model counts each token as a word.
"""

from __future__ import annotations

import numpy as np

from jaxinterp.attribution.targets import Contrast, answer_tokens
from jaxinterp.errors import ArgumentError
from jaxinterp.models import Batch


def word_starts(tokenizer, ids: list[int]) -> list[int]:
    """Indices into `ids` where a non-empty word starts (special tokens such as <eos> are no words)."""
    if tokenizer is None:
        return list(range(len(ids)))
    starts, before = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[:i + 1], skip_special_tokens=True)
        added = text[len(before):]
        if added.strip() and (not starts or added[0].isspace()):
            starts.append(i)
        before = text
    return starts


def contrast_positions(tokenizer, positions: list[int], ids: list[int], target_word: int = 1) -> tuple[int, int]:
    """(t, t') for one row: `positions`/`ids` of its answer tokens, in order."""
    starts = word_starts(tokenizer, ids)
    if not starts:
        raise ArgumentError("target: the answer has no words to contrast; pass target=Contrast.at(...)")
    target = starts[min(target_word, len(starts) - 1)]
    others = [s for s in starts if s != target]
    if others:
        return positions[target], positions[others[0]]
    if positions[0] == 0:
        raise ArgumentError("target: a one-word answer at position 0 leaves no distractor; "
                            "pass target=Contrast.at(...)")
    return positions[target], positions[0] - 1


def contrast_target(model, batch: Batch, *, answer_ids=None, target_word: int = 1,
                    whole_vocabulary: bool = True) -> Contrast:
    """The contrast of each row's answer (segment `answer` or `generated`) as spec step 4 picks it.

    Args:
      answer_ids: [B, A] the answer's final token ids, when the batch holds masks there (a denoising
        step's input); default: the batch's tokens.
      target_word: which answer word is the target (the reference: 1).
      whole_vocabulary: the reference's sum over the vocabulary (True) or the class-specific logit.
    """
    positions = np.asarray(answer_tokens(batch).positions)
    tokens = np.asarray(batch.tokens)
    pairs, ids = [], []
    for row, pos in enumerate(positions):
        pos = [int(p) for p in pos if p >= 0]
        answer = tokens[row, pos] if answer_ids is None else np.asarray(answer_ids)[row, :len(pos)]
        t, t_prime = contrast_positions(model.tokenizer, pos, [int(i) for i in answer], target_word)
        pairs.append((t, t_prime))
        by_position = dict(zip(pos, answer.tolist()))
        ids.append((by_position[t], by_position.get(t_prime, int(tokens[row, t_prime]))))
    pairs = np.asarray(pairs, np.int32)
    return Contrast.at(pairs[:, 0], pairs[:, 1], np.asarray(ids, np.int32), whole_vocabulary=whole_vocabulary)


def default_target(model, batch: Batch) -> Contrast:
    """`contrast_target` with the reference's choices."""
    return contrast_target(model, batch)
