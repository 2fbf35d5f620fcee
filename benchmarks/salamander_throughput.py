"""SalaMAnder coalition scoring on SmolLM2: the batched evaluator vs one prompt at a time, same run.

    python -m benchmarks.salamander_throughput [--expressions 4] [--problems 4]

A 1-shot demonstration with `--expressions` worked steps against `--problems` 2-step test
problems. Two measurements, each after a warm-up call (compilation excluded):

1. Throughput: every coalition x problem row (2^n x P) scored by `coalition_values` (one
   sweep over coalition masks, chunks of `--chunk` rows) vs a loop that builds each
   coalition's prompt text, tokenises it, pads it to the same width (so it compiles once)
   and runs one forward per row.
2. SalaMA end to end (m = 25): batched with the memo table vs Algorithm 1 as written, one
   value call per (S, S u {i}) pair, one prompt at a time.

The batched side continues each row from its problem's cached full prompt (`jaxinterp.prefix`).
Writes the figures to `--out` (results/salamander_throughput/results.json).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import jaxinterp
from jaxinterp.data.reasoning_gym import chain_problems
from jaxinterp.methods import salamander as sl
from jaxinterp.methods import shapley
from jaxinterp.models import make_batch

from benchmarks.common import write_results


def one_at_a_time(model, demo: str, tests, width: int):
    """value(masks) -> [M, P] computed by one forward per (coalition, problem) prompt text."""
    spans = sl.find_expressions(demo)

    def value(masks):
        out = np.zeros((len(masks), len(tests)))
        for row, keep in enumerate(masks):
            text = sl.coalition_text(demo, spans, keep)
            for p, (question, gold) in enumerate(tests):
                prompt = text + f"Q: {question}\nA: The answer is"
                ids = model.tokenizer(prompt + f" {gold}", add_special_tokens=False)["input_ids"]
                answer = len(model.tokenizer(prompt, add_special_tokens=False)["input_ids"])
                tokens = np.full((1, width), model.pad_token_id, np.int32)
                tokens[0, :len(ids)] = ids
                logits = model(make_batch(tokens, (np.arange(width) < len(ids))[None]))[0]
                positions = np.arange(answer, len(ids))
                out[row, p] = sl.answer_value(logits, positions, np.array(ids)[positions], np.ones(len(positions), bool))
        return out

    return value


def timed(fn):
    fn()  # warm-up: compilation
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expressions", type=int, default=4)
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--out", default="results/salamander_throughput/results.json")
    args = parser.parse_args()
    model = jaxinterp.load("smollm2", progress=False)
    demo_problem = chain_problems(1, terms=(args.expressions + 1,) * 2, digits=(1, 1), seed=11)[0]
    demo = f"Q: {demo_problem.story}\nA: {demo_problem.worked()}\n\n"
    tests = [(p.story, str(p.answer)) for p in chain_problems(args.problems, terms=(3, 3), digits=(1, 1), seed=12)]
    game, _ = sl.build_game(model.tokenizer, demo, tests)
    n, width = game.n, game.tokens.shape[1]
    masks = ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)
    rows = len(masks) * len(tests)

    batched_s, batched = timed(lambda: sl.coalition_values(model, game, masks, chunk_size=args.chunk))
    single = one_at_a_time(model, demo, tests, width)
    single_s, looped = timed(lambda: single(masks))
    print(f"SmolLM2 float32, n = {n} expressions x {len(tests)} problems = {rows} rows of {width} tokens")
    print(f"  max |batched - one at a time| value: {np.abs(batched - looped).max():.2e}")
    print(f"  1. batched sweep   {rows / batched_s:7.2f} rows/s")
    print(f"     one at a time   {rows / single_s:7.2f} rows/s   ratio {single_s / batched_s:.2f}x")

    memo_s, _ = timed(lambda: sl.attribute(model, game, estimator="salama", m=25, chunk_size=args.chunk))
    naive_s, _ = timed(lambda: shapley.salama(single, n, m=25))  # every (S, S u {i}) pair, duplicates included
    print(f"  2. SalaMA m=25: batched + memo {memo_s:.1f} s ({2**n} coalitions) vs Algorithm 1 one prompt at a time "
          f"{naive_s:.1f} s -> {naive_s / memo_s:.2f}x")
    write_results(args.out, {
        "model": "smollm2", "expressions": n, "problems": len(tests), "rows": rows, "width": width,
        "max_value_difference": float(np.abs(batched - looped).max()),
        "rows_per_s": {"batched": rows / batched_s, "one_at_a_time": rows / single_s},
        "throughput_ratio": single_s / batched_s,
        "salama_seconds": {"batched_memo": memo_s, "algorithm_1": naive_s}, "salama_ratio": naive_s / memo_s})


if __name__ == "__main__":
    main()
