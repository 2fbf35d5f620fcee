"""Forward speed of SmolLM2: jitted JAX forward vs transformers' PyTorch eager forward.

Both run in this process on the same 128-token prompt; the script prints medians, the
ratio, the first-call (compile) time, and the time of `load("smollm2")` from the cache in
a fresh process. Figures depend on the machine; compare ratios, not seconds.

    python benchmarks/forward.py [--tokens 128] [--repeats 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import jax
import numpy as np

import jaxinterp
from benchmarks.common import median_seconds, prompt_tokens, torch_reference

LOAD_SCRIPT = "import time; t = time.perf_counter(); import jaxinterp; m = jaxinterp.load('smollm2', progress=False); print(time.perf_counter() - t)"


def bench(dtype: str, tokens: int, repeats: int) -> dict:
    import torch

    model = jaxinterp.load("smollm2", dtype=dtype, progress=False)
    ids = prompt_tokens(model.tokenizer, tokens)
    start = time.perf_counter()
    jax.block_until_ready(model(ids))
    first = time.perf_counter() - start
    ours = median_seconds(lambda: jax.block_until_ready(model(ids)), repeats=repeats)

    reference = torch_reference(dtype)
    torch_ids = torch.as_tensor(ids).long()

    def torch_forward():
        with torch.no_grad():
            return reference(input_ids=torch_ids).logits

    theirs = median_seconds(torch_forward, repeats=repeats)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(model.params))
    return {"dtype": dtype, "first_call_s": first, "ours_s": ours, "torch_s": theirs,
            "speedup": theirs / ours, "param_mb": param_bytes / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    jaxinterp.load("smollm2", progress=False)  # make sure the cache entry exists
    load_times = [float(subprocess.run([sys.executable, "-c", LOAD_SCRIPT], capture_output=True, text=True,
                                       check=True).stdout.strip().splitlines()[-1]) for _ in range(3)]
    print(f"load('smollm2') from the cache, fresh process (incl. import): median {np.median(load_times):.2f} s")
    print(f"forward of {args.tokens} tokens, batch 1, {jax.devices()[0].platform}:")
    print(f"{'dtype':10s} {'ours (ms)':>10s} {'torch (ms)':>11s} {'speed-up':>9s} {'compile (s)':>12s} {'params (MB)':>12s}")
    for dtype in ("float32", "bfloat16"):
        r = bench(dtype, args.tokens, args.repeats)
        print(f"{dtype:10s} {1e3 * r['ours_s']:10.1f} {1e3 * r['torch_s']:11.1f} {r['speedup']:8.2f}x "
              f"{r['first_call_s']:12.2f} {r['param_mb']:12.0f}")


if __name__ == "__main__":
    main()
