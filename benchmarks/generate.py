"""Generation speed of SmolLM2: jaxinterp's jitted KV-cache loop vs transformers' `generate`.

Each side runs in its own subprocess of this one run (so peak memory is its own), on the
same prompts, greedy, 64 new tokens, at batch 1 and batch 8; ours also with one active edit
(a head ablation) applied at prefill and at every decode step. Times exclude the first call
(compilation); tokens/s counts generated tokens.

    python -m benchmarks.generate [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The history of mathematics begins with",
    "In the beginning of the twentieth century, physics",
    "A good recipe for bread needs",
    "The main reason why cities grow is",
    "When the train finally arrived at the station,",
    "Photosynthesis is the process by which",
    "The old lighthouse keeper looked at the horizon and",
]


def ours(new_tokens: int) -> dict:
    import jaxinterp

    model = jaxinterp.load("smollm2", progress=False)
    results = {}
    for label, edits in (("plain", ()), ("edit", jaxinterp.ScaleHead(layer=5, head=3, scale=0.0))):
        for batch in (1, 8):
            prompts = PROMPTS[:batch]
            model.generate(prompts, new_tokens, edits=edits)  # compile
            start = time.perf_counter()
            out = model.generate(prompts, new_tokens, edits=edits)
            seconds = time.perf_counter() - start
            results[f"{label}_b{batch}"] = sum(len(t) for t in out.tokens) / seconds
    return results


def theirs(new_tokens: int) -> dict:
    import torch

    import jaxinterp
    from benchmarks.common import torch_reference

    tokenizer = jaxinterp.load("smollm2", progress=False).tokenizer
    tokenizer.padding_side = "left"
    model = torch_reference()
    results = {}
    for batch in (1, 8):
        encoded = tokenizer(PROMPTS[:batch], return_tensors="pt", padding=True)
        kwargs = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        with torch.no_grad():
            model.generate(**encoded, **kwargs)
            start = time.perf_counter()
            out = model.generate(**encoded, **kwargs)
        seconds = time.perf_counter() - start
        generated = out[:, encoded["input_ids"].shape[1]:]
        results[f"plain_b{batch}"] = int((generated != tokenizer.pad_token_id).sum()) / seconds
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--part", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        result = (ours if args.part == "ours" else theirs)(args.new_tokens)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    measured = {}
    for part in ("ours", "theirs"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.generate", "--part", part, "--new-tokens", str(args.new_tokens)],
                             capture_output=True, text=True, check=True)
        measured[part] = json.loads(out.stdout.strip().splitlines()[-1])
    a, b = measured["ours"], measured["theirs"]
    print(f"greedy generation, {args.new_tokens} new tokens, SmolLM2 float32 (tokens/s, higher is better)")
    print(f"{'':24s} {'ours':>9s} {'torch':>9s} {'ratio':>7s}")
    for batch in (1, 8):
        key = f"plain_b{batch}"
        print(f"{'batch ' + str(batch):24s} {a[key]:9.1f} {b[key]:9.1f} {a[key] / b[key]:6.2f}x")
    for batch in (1, 8):
        overhead = a[f"plain_b{batch}"] / a[f"edit_b{batch}"] - 1
        print(f"{'one edit, batch ' + str(batch):24s} {a[f'edit_b{batch}']:9.1f} {'':9s} overhead {100 * overhead:+.1f}%")
    print(f"{'peak RSS (MB)':24s} {a['peak_rss_mb']:9.0f} {b['peak_rss_mb']:9.0f}")


if __name__ == "__main__":
    main()
