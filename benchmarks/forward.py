"""Forward speed of SmolLM2: jitted JAX forward vs transformers' PyTorch eager forward.

Both run in this process on the same prompts (default 128 and 1,024 tokens, float32 and
bfloat16); the script prints medians, ratios, the first-call (compile) time, the time of
`load("smollm2")` from the cache in a fresh process, and, at the longest length, the fused
attention path against the materialised one (an identity edit on every layer's
`attn.probs` forces the latter): time and the compiled program's temporary memory.

It also times, at the longest length, the forward's weight products alone (every projection and the
language-model head as plain matrix products of the same shapes, in XLA and in PyTorch) and adds
causal attention's products at XLA's measured rate: no forward beats that floor, so PyTorch's time
over it bounds any float32 speed-up on this machine (`roofline`), and a bfloat16 product time above
our float32 forward rules out bf16 beating float32 here.
Figures depend on the machine; compare ratios, not seconds.

    python -m benchmarks.forward [--tokens 128 1024] [--repeats 10] [--out results/forward/results.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import jax
import numpy as np

import jaxinterp
from benchmarks.common import median_seconds, prompt_tokens, torch_reference, write_results

LOAD_SCRIPT = "import time; t = time.perf_counter(); import jaxinterp; m = jaxinterp.load('smollm2', progress=False); print(time.perf_counter() - t)"


def bench(model: jaxinterp.Model, reference, ids: np.ndarray, repeats: int) -> dict:
    """Our forward (first call and median) and the PyTorch eager median on the same ids."""
    import torch

    start = time.perf_counter()
    jax.block_until_ready(model(ids))
    first = time.perf_counter() - start
    ours = median_seconds(lambda: jax.block_until_ready(model(ids)), repeats=repeats)
    torch_ids = torch.as_tensor(ids).long()

    def torch_forward():
        with torch.no_grad():
            return reference(input_ids=torch_ids).logits

    theirs = median_seconds(torch_forward, repeats=repeats)
    return {"first_call_s": first, "ours_s": ours, "torch_s": theirs, "speedup": theirs / ours}


# An identity edit on every layer's pattern: it observes `attn.probs`, so each layer materialises it.
MATERIALISE = jaxinterp.FunctionEdit(("blocks.*.attn.probs",), lambda probs, ctx, args: probs)


def temporary_bytes(model: jaxinterp.Model, ids: np.ndarray, edits: tuple) -> int:
    """Temporary memory XLA allocates for the compiled forward (beyond parameters, inputs and outputs)."""
    batch = model.batch(ids)
    fn = jax.jit(lambda model, batch: model.apply(batch, edits=edits).logits)
    return fn.lower(model, batch).compile().memory_analysis().temp_size_in_bytes


def attention_paths(model: jaxinterp.Model, ids: np.ndarray, repeats: int) -> dict:
    """The fused path (nothing observes the patterns) against the materialised one (`MATERIALISE`)."""
    fused = median_seconds(lambda: jax.block_until_ready(model(ids)), repeats=repeats)
    materialised = median_seconds(lambda: jax.block_until_ready(model(ids, edits=MATERIALISE)), repeats=repeats)
    return {"fused_s": fused, "materialised_s": materialised,
            "fused_temp_mb": temporary_bytes(model, ids, ()) / 2**20,
            "materialised_temp_mb": temporary_bytes(model, ids, (MATERIALISE,)) / 2**20}


def weight_products(config) -> dict[tuple[int, int], int]:
    """{(inputs, outputs): count} of the matrix products with weights that a forward of a Llama-family
    config runs for each token (attention's own products of queries, keys and values are left out)."""
    heads, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    per_layer = [(config.hidden_size, heads), (config.hidden_size, kv), (config.hidden_size, kv),
                 (heads, config.hidden_size), (config.hidden_size, config.intermediate_size),
                 (config.hidden_size, config.intermediate_size), (config.intermediate_size, config.hidden_size)]
    counts: dict[tuple[int, int], int] = {(config.hidden_size, config.vocab_size): 1}
    for shape in per_layer:
        counts[shape] = counts.get(shape, 0) + config.num_layers
    return counts


def products_seconds(config, tokens: int, dtype: str, side: str, repeats: int) -> float:
    """Time of the forward's weight products alone on `side` ("jax" or "torch"): each distinct
    [tokens, inputs] x [inputs, outputs] product timed once (median) and multiplied by its count."""
    import torch

    total, rng = 0.0, np.random.default_rng(0)
    for (inputs, outputs), count in weight_products(config).items():
        a = rng.standard_normal((tokens, inputs), np.float32)
        b = rng.standard_normal((inputs, outputs), np.float32)
        if side == "jax":
            x, w = jax.numpy.asarray(a, dtype), jax.numpy.asarray(b, dtype)
            product = jax.jit(lambda x, w: x @ w)
            seconds = median_seconds(lambda: jax.block_until_ready(product(x, w)), repeats=repeats)
        else:
            x, w = (torch.from_numpy(t).to(getattr(torch, dtype)) for t in (a, b))
            seconds = median_seconds(lambda: x @ w, repeats=repeats)
        total += count * seconds
    return total


def roofline(config, tokens: int, torch_float32_s: float, repeats: int) -> dict:
    """The floor under a float32 forward with XLA's products on this machine: the weight products at
    XLA's measured rate plus causal attention's products (q.k and p.v over the lower triangle,
    4 H Dh T(T+1)/2 FLOPs a layer) at the same rate; `bound_over_torch_float32` is PyTorch's time over
    that floor. PyTorch's own products are timed too, so a faster GEMM on its side would show."""
    out = {f"{side}_{dtype}_s": products_seconds(config, tokens, dtype, side, repeats)
           for side, dtype in (("jax", "float32"), ("jax", "bfloat16"), ("torch", "float32"))}
    weight_flops = sum(2 * tokens * inputs * outputs * count
                       for (inputs, outputs), count in weight_products(config).items())
    rate = weight_flops / out["jax_float32_s"]
    attention_flops = config.num_layers * 4 * config.num_heads * config.head_dim * tokens * (tokens + 1) / 2
    floor = out["jax_float32_s"] + attention_flops / rate
    return {**out, "xla_float32_gflops": rate / 1e9, "float32_floor_s": floor,
            "bound_over_torch_float32": torch_float32_s / floor}


def _row(rows: list[dict], dtype: str, tokens: int) -> dict:
    """The forward row of one dtype and length."""
    return next(row for row in rows if row["dtype"] == dtype and row["tokens"] == tokens)


def _ratio(speedup: float) -> str:
    """`1.13x faster`, `0.89x (PyTorch faster)` or `1.00x (even)`, judged on the printed figure."""
    shown = f"{speedup:.2f}"
    return f"{shown}x " + ("(even)" if shown == "1.00" else "faster" if speedup > 1 else "(PyTorch faster)")


def markdown(results: dict) -> str:
    """The README's table (and the sentence under it) for a results file, so no figure is typed twice."""
    bf16_over_f32 = {int(tokens): ratio for tokens, ratio in results["bfloat16_over_float32"].items()}
    lines = ["| SmolLM2 forward, batch 1 | ours | PyTorch | ratio |", "|---|---|---|---|"]
    for row in sorted(results["forward"], key=lambda row: (row["dtype"] != "float32", row["tokens"])):
        ratio = _ratio(row["speedup"])
        if row["dtype"] == "bfloat16":
            ratio += f"; {bf16_over_f32[row['tokens']]:.2f}x our float32"
        lines.append(f"| {row['tokens']:,} tokens, {row['dtype']} | {1e3 * row['ours_s']:.0f} ms | "
                     f"{1e3 * row['torch_s']:.0f} ms | {ratio} |")
    paths, floor = results["attention_paths"], results["roofline"]
    lines.append(f"| {paths['tokens']:,} tokens, float32: fused vs materialised attention | {1e3 * paths['fused_s']:.0f} "
                 f"vs {1e3 * paths['materialised_s']:.0f} ms | - | {paths['materialised_s'] / paths['fused_s']:.2f}x faster; "
                 f"XLA temporary memory {paths['fused_temp_mb']:.0f} vs {paths['materialised_temp_mb']:.0f} MiB |")
    lines.append(f"| {floor['tokens']:,} tokens: the weight products alone | XLA {1e3 * floor['jax_float32_s']:.0f} ms "
                 f"float32 ({floor['xla_float32_gflops']:.0f} GFLOP/s), {1e3 * floor['jax_bfloat16_s']:.0f} ms bfloat16 | "
                 f"{1e3 * floor['torch_float32_s']:.0f} ms float32 | floor with causal attention "
                 f"{1e3 * floor['float32_floor_s']:.0f} ms |")
    ours = _row(results["forward"], "float32", floor["tokens"])["ours_s"]
    lines += ["", f"At {floor['tokens']:,} tokens PyTorch's float32 forward takes {floor['bound_over_torch_float32']:.2f}x "
              f"that floor and ours {ours / floor['float32_floor_s']:.2f}x."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="results/forward/results.json")
    args = parser.parse_args()

    jaxinterp.load("smollm2", progress=False)  # make sure the cache entry exists
    load_times = [float(subprocess.run([sys.executable, "-c", LOAD_SCRIPT], capture_output=True, text=True,
                                       check=True).stdout.strip().splitlines()[-1]) for _ in range(3)]
    print(f"load('smollm2') from the cache, fresh process (incl. import): median {np.median(load_times):.2f} s")
    print(f"forward, batch 1, {jax.devices()[0].platform}:")
    print(f"{'dtype':10s} {'tokens':>6s} {'ours (ms)':>10s} {'torch (ms)':>11s} {'speed-up':>9s} {'compile (s)':>12s}")
    ours_ms, rows = {}, []
    for dtype in ("float32", "bfloat16"):
        model = jaxinterp.load("smollm2", dtype=dtype, progress=False)
        reference = torch_reference(dtype)
        for tokens in args.tokens:
            r = bench(model, reference, prompt_tokens(model.tokenizer, tokens), args.repeats)
            ours_ms[dtype, tokens] = 1e3 * r["ours_s"]
            rows.append({"dtype": dtype, "tokens": tokens, **r})
            print(f"{dtype:10s} {tokens:6d} {1e3 * r['ours_s']:10.1f} {1e3 * r['torch_s']:11.1f} "
                  f"{r['speedup']:8.2f}x {r['first_call_s']:12.2f}")
        del reference
    bf16_over_f32 = {tokens: ours_ms["float32", tokens] / ours_ms["bfloat16", tokens] for tokens in args.tokens}
    for tokens, ratio in bf16_over_f32.items():
        print(f"bfloat16 vs our float32 at {tokens} tokens: {ratio:.2f}x")
    longest = max(args.tokens)
    model = jaxinterp.load("smollm2", progress=False)
    paths = attention_paths(model, prompt_tokens(model.tokenizer, longest), args.repeats)
    print(f"attention at {longest} tokens, float32: fused {1e3 * paths['fused_s']:.1f} ms, "
          f"materialised {1e3 * paths['materialised_s']:.1f} ms ({paths['materialised_s'] / paths['fused_s']:.2f}x); "
          f"temporary memory fused {paths['fused_temp_mb']:.0f} MiB, materialised {paths['materialised_temp_mb']:.0f} MiB")
    floor = roofline(model.config, longest, _row(rows, "float32", longest)["torch_s"], args.repeats)
    print(f"weight products alone at {longest} tokens: XLA float32 {1e3 * floor['jax_float32_s']:.0f} ms "
          f"({floor['xla_float32_gflops']:.0f} GFLOP/s), bfloat16 {1e3 * floor['jax_bfloat16_s']:.0f} ms, PyTorch float32 "
          f"{1e3 * floor['torch_float32_s']:.0f} ms; with causal attention at that rate the float32 floor is "
          f"{1e3 * floor['float32_floor_s']:.0f} ms, so no float32 forward can beat PyTorch's by more than "
          f"{floor['bound_over_torch_float32']:.2f}x here")
    results = {"model": "smollm2", "batch": 1, "load_from_cache_s": float(np.median(load_times)),
               "forward": rows, "bfloat16_over_float32": bf16_over_f32,
               "attention_paths": {"tokens": longest, **paths}, "roofline": {"tokens": longest, **floor}}
    write_results(args.out, results)
    print(f"\nfor the README's Performance section:\n\n{markdown(json.loads(json.dumps(results)))}")


if __name__ == "__main__":
    main()
