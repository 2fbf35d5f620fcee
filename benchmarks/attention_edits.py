"""Cost of the attention edits on SmolLM2, each against the plain forward measured in the same run.

    python -m benchmarks.attention_edits [--tokens 512] [--repeats 9] [--starts 7]

1. Overhead of ART (layer 0, 10% of the heads, the code's defaults) and of EVAS (layer 1, over a
   256-token span labelled `image`) on one forward of `--tokens` tokens: median seconds and the
   ratio to the plain forward (target: under 10% extra).
2. The truncation sweep over `--starts` values of K (R = 0, an 8-token answer scored) as one
   vmapped `truncation_sweep`, against a Python loop of one forward per K (K is an array leaf,
   so the loop reuses one compiled program). First calls (compiles) are reported apart; the timed
   calls of the variants take turns, so load changes on a shared machine hit them alike.
Figures depend on the machine; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np

import jaxinterp
from benchmarks.common import prompt_tokens
from jaxinterp.methods.art import art
from jaxinterp.methods.evas import evas
from jaxinterp.methods.truncation import Truncate, answer_scores, truncation_sweep
from jaxinterp.models import make_batch, segment_id


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """(first call, median of `repeats` later calls) seconds per function; the later calls take turns,
    so a change in machine load hits every function alike and the ratios stay fair."""
    first, times = {}, {name: [] for name in fns}
    for name, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn())
        first[name] = time.perf_counter() - start
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: (first[name], statistics.median(times[name])) for name in fns}


def labelled_batch(model: jaxinterp.Model, tokens: int):
    """A fixed text with tokens [T/8, T/8 + 256) labelled `image` and the last 8 labelled `answer`."""
    ids = prompt_tokens(model.tokenizer, tokens)
    segments = np.full(ids.shape, segment_id("question"))
    start = tokens // 8
    segments[0, start:start + min(256, tokens // 2)] = segment_id("image")
    segments[0, -8:] = segment_id("answer")
    return make_batch(ids, segments=segments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--starts", type=int, default=7, help="values of K in the truncation sweep")
    args = parser.parse_args()
    model = jaxinterp.load("smollm2", progress=False)
    batch = labelled_batch(model, args.tokens)

    print(f"forward of {args.tokens} tokens, batch 1, {jax.devices()[0].platform}:")
    print(f"{'edit':34s} {'median (ms)':>12s} {'vs plain':>9s} {'first call (s)':>15s}")
    edits = {"plain": (), "ART (layer 0, 10% of heads)": art(model),
             "EVAS (layer 1, 256-token span)": evas(model, beta=0.002)}
    timings = interleaved({label: lambda e=edit: model(batch, edits=e) for label, edit in edits.items()}, args.repeats)
    base = timings["plain"][1]
    for label, (first, median) in timings.items():
        print(f"{label:34s} {1e3 * median:12.1f} {median / base:8.3f}x {first:15.2f}")

    starts = np.linspace(0, model.config.num_layers, args.starts).round().astype(int).tolist()
    print(f"\ntruncation over K in {starts} (R = 0):")

    def separate():
        return [answer_scores(model(batch, edits=Truncate(start=k)), batch) for k in starts]

    def swept():
        return truncation_sweep(model, batch, starts)["log_prob"]

    found = interleaved({"loop": separate, "sweep": swept}, max(1, args.repeats // 3))
    loop, vmapped = found["loop"], found["sweep"]
    print(f"{'one forward per K (loop)':34s} {loop[1]:10.2f} s {'':9s} {loop[0]:15.2f}")
    print(f"{'truncation_sweep (vmap)':34s} {vmapped[1]:10.2f} s {vmapped[1] / loop[1]:8.3f}x {vmapped[0]:15.2f}")


if __name__ == "__main__":
    main()
