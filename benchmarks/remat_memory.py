"""Peak memory of `grad` through a long SmolLM2 input, with and without `remat` (target: remat <= 0.5x).

    python -m benchmarks.remat_memory [--tokens 2048]

Each measurement runs in a fresh subprocess: the gradient of the last token's log-sum-exp
with respect to every block's `resid_post` (30 sites) on a `--tokens`-token input, plain and
with `remat=True`, and a subprocess that only loads the model. Prints each peak resident set
size (ru_maxrss), the growth over the loaded model, their ratio, the wall time, and the
largest difference between the two gradients (remat recomputes, it must not change values),
and writes them to `--out` (results/remat_memory/results.json).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import write_results


def measure(tokens: int, part: str) -> dict:
    import jax

    import jaxinterp
    from benchmarks.common import prompt_tokens

    model = jaxinterp.load("smollm2", progress=False)
    result = {}
    if part != "load":
        ids = np.resize(prompt_tokens(model.tokenizer, tokens)[0], tokens)[None]  # the fixed text, repeated
        start = time.perf_counter()
        _, grads = model.grad(lambda run: jax.nn.logsumexp(run.logits[0, -1]), ids, wrt=["blocks.*.resid_post"],
                              remat=part == "remat")
        stacked = np.stack([np.asarray(g[0, :: max(1, tokens // 64)]) for g in grads.values()])  # a sample, to compare
        result = {"seconds": time.perf_counter() - start, "sample": stacked.tolist()}
    return {**result, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--out", default="results/remat_memory/results.json")
    parser.add_argument("--part", choices=["load", "plain", "remat"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(measure(args.tokens, args.part)))
        return
    measured = {}
    for part in ("load", "plain", "remat"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.remat_memory", "--part", part, "--tokens", str(args.tokens)],
                             capture_output=True, text=True, check=True)
        measured[part] = json.loads(out.stdout.strip().splitlines()[-1])
    base = measured["load"]["peak_rss_gb"]
    growth = {part: measured[part]["peak_rss_gb"] - base for part in ("plain", "remat")}
    difference = np.abs(np.array(measured["plain"]["sample"]) - np.array(measured["remat"]["sample"])).max()
    scale = np.abs(np.array(measured["plain"]["sample"])).max()
    print(f"grad w.r.t. every resid_post, SmolLM2 float32, {args.tokens} tokens")
    print(f"  peak RSS, model loaded only : {base:.2f} GB")
    for part in ("plain", "remat"):
        print(f"  peak RSS, {part:5s} grad      : {measured[part]['peak_rss_gb']:.2f} GB "
              f"(+{growth[part]:.2f} GB), {measured[part]['seconds']:.1f} s incl. compile")
    print(f"  remat / plain, growth over the loaded model: {growth['remat'] / growth['plain']:.2f}x (target <= 0.5x)")
    print(f"  largest gradient difference: {difference:.2e} (gradient scale {scale:.2e})")
    write_results(args.out, {
        "model": "smollm2", "dtype": "float32", "tokens": args.tokens, "sites": "blocks.*.resid_post", "loaded_gb": base,
        "growth_gb": growth, "seconds": {part: measured[part]["seconds"] for part in growth},
        "remat_over_plain": growth["remat"] / growth["plain"], "max_gradient_difference": float(difference)})


if __name__ == "__main__":
    main()
