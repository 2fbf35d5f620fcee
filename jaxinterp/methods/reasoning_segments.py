"""Reasoning traces cut into steps: question | thinking steps | summary steps.

Step-Saliency (Xu et al., ACL 2026, arXiv:2604.06695) pools token saliency into steps
Q | T_1..T_nT | S_1..S_nS (spec A). The splitting rules follow the released analysis script
(`extract_steps`) and are all parameters of `SplitRules`. Unlike the script, which
re-tokenises each piece and assigns token counts sequentially (and so drifts on the
scaffolding it ignores), every step here is a character span of the one serialised text,
and tokens are mapped to steps through the tokenizer's character offsets: a token belongs
to the step whose span its characters overlap, and scaffolding or dropped chunks belong to
no step (-1).
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Sequence

import numpy as np

from jaxinterp.errors import ArgumentError

KINDS = ("question", "thinking", "summary")
# The released code re-serialises traces as this "filtered" text before computing saliency.
TEMPLATE = "Question: {question}\n\nReasoning: {thinking}\n\nAnswer: {summary}"


@dataclasses.dataclass(frozen=True)
class SplitRules:
    """How thinking and summary text are cut into steps (defaults: the released analysis script).

    Attributes:
      thinking_separator: regex between thinking steps (`re.split(r'\\.\\s+', ...)`).
      summary_separator: regex between summary steps (`split('\\n\\n')`).
      min_thinking_chars: thinking chunks shorter than this are dropped (15 in the code).
      min_summary_chars: summary chunks shorter than this are dropped (10 in the code).
      drop_tables: drop markdown table rows and separators (code behaviour).
      drop_numbers: drop thinking chunks that are only digits and `.,-` (code behaviour).
    """

    thinking_separator: str = r"\.\s+"
    summary_separator: str = r"\n\n"
    min_thinking_chars: int = 15
    min_summary_chars: int = 10
    drop_tables: bool = True
    drop_numbers: bool = True


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: its kind (`question`, `thinking`, `summary`) and its [start, end) character span."""

    kind: str
    start: int
    end: int


@dataclasses.dataclass(frozen=True)
class Trace:
    """A serialised trace and its steps in order Q | T | S."""

    text: str
    steps: tuple[Step, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(step.kind for step in self.steps)


def _is_table(chunk: str) -> bool:
    stripped = chunk.strip()
    return (stripped.startswith("|") and stripped.count("|") > 2) or (
        stripped.startswith(("|--", "---")) and len(stripped) < 20
    )


def _kept(chunk: str, min_chars: int, rules: SplitRules, numbers: bool) -> bool:
    stripped = chunk.strip()
    if len(stripped) < min_chars or (rules.drop_tables and _is_table(stripped)):
        return False
    return not (numbers and rules.drop_numbers and re.sub(r"[.,\-\s]", "", stripped).isdigit())


def _chunks(text: str, offset: int, separator: str, min_chars: int, rules: SplitRules, numbers: bool, kind: str):
    """Steps of `text` (placed at `offset` in the serialised trace), split at `separator`."""
    steps, start = [], 0
    for cut in [*re.finditer(separator, text), None]:
        end = len(text) if cut is None else cut.start()
        # a thinking step keeps its full stop, as in the code (which re-appends it)
        end_kept = end + (1 if cut is not None and text[end:end + 1] == "." else 0)
        chunk = text[start:end_kept]
        if _kept(chunk, min_chars, rules, numbers):
            lead = len(chunk) - len(chunk.lstrip())
            trail = len(chunk.rstrip())
            steps.append(Step(kind, offset + start + lead, offset + start + trail))
        start = len(text) if cut is None else cut.end()
    return steps


def split_trace(question: str, thinking: str, summary: str, *, rules: SplitRules = SplitRules(),
                template: str = TEMPLATE) -> Trace:
    """Serialises a trace with `template` and cuts it into Q | T_1..T_nT | S_1..S_nS (spec A.2-A.5).

    The question is one step; thinking is cut at `rules.thinking_separator`, the summary at
    `rules.summary_separator`, dropping short chunks, tables and bare numbers.
    """
    for name, value in (("question", question), ("thinking", thinking), ("summary", summary)):
        if not isinstance(value, str):
            raise ArgumentError(f"{name}: expected a string, found {type(value).__name__}")
    if template.count("{question}") != 1 or template.count("{thinking}") != 1 or template.count("{summary}") != 1:
        raise ArgumentError(f"template: expected one each of {{question}}, {{thinking}}, {{summary}}; found {template!r}")
    values = {"question": question, "thinking": thinking, "summary": summary}
    pieces, offsets = [], {}
    for literal, field, _, _ in string.Formatter().parse(template):
        pieces.append(literal)
        if field is not None:
            offsets[field] = sum(map(len, pieces))
            pieces.append(values[field])
    text = "".join(pieces)
    steps = [Step("question", offsets["question"], offsets["question"] + len(question))] if question.strip() else []
    steps += _chunks(thinking, offsets["thinking"], rules.thinking_separator, rules.min_thinking_chars, rules, True, "thinking")
    steps += _chunks(summary, offsets["summary"], rules.summary_separator, rules.min_summary_chars, rules, False, "summary")
    return Trace(text=text, steps=tuple(steps))


def token_steps(offsets: Sequence[tuple[int, int]], steps: Sequence[Step]) -> np.ndarray:
    """[T] int32 step index of each token from its (start, end) character offsets; -1 outside every step.

    A token belongs to the first step its characters overlap (special tokens with an empty
    span belong to none).
    """
    starts = np.array([s.start for s in steps])
    ends = np.array([s.end for s in steps])
    result = np.full(len(offsets), -1, np.int32)
    for i, (a, b) in enumerate(offsets):
        if b > a:
            hit = np.flatnonzero((starts < b) & (ends > a))
            if hit.size:
                result[i] = hit[0]
    return result


def tokenize_trace(tokenizer, trace: Trace, *, max_tokens: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(token ids [T], step index [T]) of a trace, truncated to `max_tokens` (2048 in the code)."""
    encoded = tokenizer(trace.text, return_offsets_mapping=True, add_special_tokens=False)
    ids = np.asarray(encoded["input_ids"][:max_tokens], np.int32)
    return ids, token_steps(encoded["offset_mapping"][:max_tokens], trace.steps)
