"""Reasoning traces of a chat model on reasoning-gym chain sums told as word problems (shared by the
Step-Saliency and StepFlow experiments): prompts, greedy generation, parsing, Q | T | S splitting."""

from __future__ import annotations

from jaxinterp.data.reasoning_gym import ChainProblem, chain_problems, parse_answer
from jaxinterp.methods.reasoning_segments import Trace, split_trace

INSTRUCTION = " Solve it step by step, then finish with 'The answer is N.'"
SUMMARY_MARKER = "The answer is"


def problems(count: int, seed: int) -> list[ChainProblem]:
    """1- and 2-step problems with one-digit numbers (the 135M default model solves few longer ones)."""
    return chain_problems(count, terms=(2, 3), digits=(1, 1), seed=seed)


def prompt(problem: ChainProblem) -> str:
    return problem.story + INSTRUCTION


def trace(problem: ChainProblem, completion: str) -> Trace:
    """Question = the story; summary = from the last 'The answer is' on (else the last sentence); thinking = the rest."""
    cut = completion.rfind(SUMMARY_MARKER)
    if cut < 0:
        cut = completion.rstrip().rstrip(".").rfind(".") + 1
    return split_trace(problem.story, completion[:cut].strip(), completion[cut:].strip())


def correct(problem: ChainProblem, completion: str) -> bool:
    return parse_answer(completion) == problem.answer
