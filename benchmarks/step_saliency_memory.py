"""Peak memory of Step-Saliency on a 2,048-token trace of SmolLM2 (target: under 8 GB).

    python -m benchmarks.step_saliency_memory [--tokens 2048] [--steps 48]

Runs `step_maps` (all 30 layers, rule `ag`, mean next-token loss) on a 2,048-token text cut
into `--steps` equal steps, in a fresh subprocess, and prints its peak resident set size
(ru_maxrss) next to the peak of a subprocess that only loads the model, plus the wall time.
The saliency of each layer is reduced to its step map inside that layer's backward, so the
peak is the forward's own residuals (one [1, 9, T, T] float32 pattern per layer, ~150 MB at
T = 2,048) plus the [T, vocab] logits and their gradient, not 30 x 9 x T x T saliencies.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def measure(tokens: int, steps: int, load_only: bool) -> dict:
    import jaxinterp
    from benchmarks.common import prompt_tokens
    from jaxinterp.methods.step_saliency import step_maps

    model = jaxinterp.load("smollm2", progress=False)
    result = {}
    if not load_only:
        ids = np.resize(prompt_tokens(model.tokenizer, tokens)[0], tokens)[None]  # the fixed text, repeated
        step_of = np.minimum(np.arange(tokens) * steps // tokens, steps - 1)[None]
        start = time.perf_counter()
        _, maps = step_maps(model, ids, step_of, num_steps=steps)
        maps.block_until_ready()
        result = {"seconds": time.perf_counter() - start, "maps_shape": list(maps.shape)}
    return {**result, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--part", choices=["load", "saliency"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(measure(args.tokens, args.steps, args.part == "load")))
        return
    measured = {}
    for part in ("load", "saliency"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.step_saliency_memory", "--part", part,
                              "--tokens", str(args.tokens), "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        measured[part] = json.loads(out.stdout.strip().splitlines()[-1])
    saliency = measured["saliency"]
    print(f"Step-Saliency, SmolLM2 float32, {args.tokens} tokens, {args.steps} steps, all 30 layers")
    print(f"  peak RSS, model loaded only : {measured['load']['peak_rss_gb']:.2f} GB")
    print(f"  peak RSS, step maps         : {saliency['peak_rss_gb']:.2f} GB (target < 8 GB)")
    print(f"  wall time (incl. compile)   : {saliency['seconds']:.1f} s; maps {saliency['maps_shape']}")


if __name__ == "__main__":
    main()
