"""Procedurally generated multi-step arithmetic from the `reasoning-gym` package (optional extra).

`chain_problems` draws reasoning-gym's seeded `chain_sum` items (a + b - c ... =, left to
right) and keeps those whose running totals stay non-negative, so that each can also be told
as a short word problem about counting objects (`ChainProblem.story`, our own templates).
Each item knows its worked steps (`a + b = c`, one expression per operation), which are the
players of SalaMAnder and the thinking steps of the Step-Saliency traces.

    pip install reasoning-gym
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from jaxinterp.errors import ArgumentError

NAMES = ("Tom", "Sara", "Ben", "Lily", "Omar", "Mia", "Ravi", "Emma", "Leo", "Nina")
OBJECTS = ("apples", "stickers", "marbles", "books", "coins", "pencils", "cards", "shells")


@dataclasses.dataclass(frozen=True)
class ChainProblem:
    """One chain sum: its reasoning-gym question, integer answer, terms and operators."""

    question: str
    answer: int
    terms: tuple[int, ...]
    ops: tuple[str, ...]
    name: str
    thing: str

    @property
    def steps(self) -> list[str]:
        """The worked expressions, left to right: `a + b = c`, `c - d = e`, ..."""
        out, total = [], self.terms[0]
        for op, term in zip(self.ops, self.terms[1:]):
            new = total + term if op == "+" else total - term
            out.append(f"{total} {op} {term} = {new}")
            total = new
        return out

    @property
    def story(self) -> str:
        """The chain told as a word problem about `name` and `thing` (our template)."""
        parts = [f"{self.name} has {self.terms[0]} {self.thing}."]
        for op, term in zip(self.ops, self.terms[1:]):
            parts.append(f"Then {self.name} gets {term} more." if op == "+" else f"Then {self.name} gives away {term}.")
        parts.append(f"How many {self.thing} does {self.name} have now?")
        return " ".join(parts)

    def worked(self) -> str:
        """A worked answer: one sentence per step, then `The answer is N.`"""
        return " ".join(f"{s}." for s in self.steps) + f" The answer is {self.answer}."


def chain_problems(count: int, *, terms: tuple[int, int] = (3, 3), digits: tuple[int, int] = (1, 2),
                   seed: int = 0) -> list[ChainProblem]:
    """`count` chain sums with `terms` (min, max) terms of `digits` (min, max) digits whose running
    totals stay >= 0, from reasoning-gym's `chain_sum` with `seed`."""
    import reasoning_gym

    if count < 1 or terms[0] < 2 or terms[1] < terms[0]:
        raise ArgumentError(f"count, terms: expected count >= 1 and 2 <= min <= max terms, found {count}, {terms}")
    rng = np.random.default_rng(seed)
    dataset = reasoning_gym.create_dataset("chain_sum", size=max(20 * count, 200), seed=seed, min_terms=terms[0],
                                           max_terms=terms[1], min_digits=digits[0], max_digits=digits[1])
    problems = []
    for item in dataset:
        tokens = item["metadata"]["expression"].split()
        values, ops = tuple(int(t) for t in tokens[::2]), tuple(tokens[1::2])
        totals = np.cumsum([values[0]] + [v if o == "+" else -v for o, v in zip(ops, values[1:])])
        if totals.min() < 0 or not set(ops) <= {"+", "-"}:
            continue
        problems.append(ChainProblem(question=item["question"], answer=int(item["answer"]), terms=values, ops=ops,
                                     name=NAMES[rng.integers(len(NAMES))], thing=OBJECTS[rng.integers(len(OBJECTS))]))
        if len(problems) == count:
            return problems
    raise ArgumentError(f"count: only {len(problems)} non-negative chains among {len(dataset)} drawn; ask for fewer")


def parse_answer(text: str) -> int | None:
    """The integer after the last `answer is` in `text`, else its last integer (None when it has none)."""
    hits = re.findall(r"answer is\s*:?\s*\$?(-?\d[\d,]*)", text) or re.findall(r"-?\d[\d,]*", text)
    return int(hits[-1].replace(",", "")) if hits and hits[-1].strip(",-") else None
