"""Activation patching on SmolLM2: the whole resid_pre grid as one sweep vs a loop of PyTorch forwards.

    python -m benchmarks.patching [--tokens 20] [--out results/patching_smollm2/results.json]

A clean / corrupted pair of `--tokens` tokens (the corrupted one differs at one token), the
metric a logit difference of two fixed tokens at the last position, the resid_pre grid over
every layer x every position. Ours: `patching.activation_patching` (one compiled program,
chunked by the memory budget) and `patching.attribution_patching` (one forward + backward).
The references, on the same weights: transformers' model with one forward per cell and a
forward pre-hook that writes the clean residual at the cell, and, where `transformer-lens`
is installed, its own loop (`get_act_patch_resid_pre` over a `TransformerBridge` of that
model). First calls (with compiles) are reported apart. Figures depend on the machine;
compare the ratios, all measured in this run. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import tempfile
import time

import jax
import numpy as np

import jaxinterp
from benchmarks.common import prompt_tokens, torch_reference, write_results
from jaxinterp import patching


def seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def torch_grid(reference, clean: np.ndarray, corrupted: np.ndarray, layers: int, answer: int, wrong: int) -> np.ndarray:
    """The grid by the PyTorch hook loop: one no-grad forward per (layer, position)."""
    import torch

    blocks = reference.model.layers
    with torch.no_grad():
        cached = {}
        hooks = [blocks[i].register_forward_pre_hook(
            lambda module, args, kwargs, i=i: cached.__setitem__(i, (args[0] if args else kwargs["hidden_states"]).clone()),
            with_kwargs=True) for i in range(layers)]
        reference(torch.from_numpy(clean).long())
        for hook in hooks:
            hook.remove()
        out = np.zeros((layers, clean.shape[1]), np.float32)
        corrupted = torch.from_numpy(corrupted).long()
        for layer in range(layers):
            for position in range(clean.shape[1]):
                def write(module, args, kwargs, layer=layer, position=position):
                    hidden = (args[0] if args else kwargs["hidden_states"]).clone()
                    hidden[:, position] = cached[layer][:, position]
                    return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

                hook = blocks[layer].register_forward_pre_hook(write, with_kwargs=True)
                logits = reference(corrupted).logits[0, -1]
                hook.remove()
                out[layer, position] = float(logits[answer] - logits[wrong])
    return out


def transformer_lens_bridge(reference, tokenizer):
    """TransformerLens's `TransformerBridge` over `reference` (the same module, hooked by TransformerLens)."""
    from transformer_lens.model_bridge import TransformerBridge

    with tempfile.TemporaryDirectory() as folder:
        reference.config.save_pretrained(folder)  # the bridge reads the architecture from a config file
        return TransformerBridge.boot_transformers(folder, hf_model=reference, tokenizer=tokenizer)


def transformer_lens_grid(bridge, clean: np.ndarray, corrupted: np.ndarray, answer: int, wrong: int) -> np.ndarray:
    """The grid by TransformerLens's own loop, `get_act_patch_resid_pre` (one forward per cell)."""
    import torch
    from transformer_lens import patching as tl_patching

    with torch.no_grad():
        _, cache = bridge.run_with_cache(torch.from_numpy(clean).long())
        grid = tl_patching.get_act_patch_resid_pre(bridge, torch.from_numpy(corrupted).long(), cache,
                                                   lambda logits: logits[0, -1, answer] - logits[0, -1, wrong])
    return grid.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--out", default="results/patching_smollm2/results.json")
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")
    model = jaxinterp.load("smollm2", progress=False)
    clean = prompt_tokens(model.tokenizer, args.tokens)
    corrupted = clean.copy()
    corrupted[0, args.tokens // 2] = clean[0, 1]
    answer, wrong = int(clean[0, -1]), int(clean[0, 2])
    metric = patching.logit_diff(answer, wrong)
    layers = model.config.num_layers

    def ours():
        return patching.activation_patching(model, clean, corrupted, metric).values

    def attribution():
        return patching.attribution_patching(model, clean, corrupted, metric).values

    first, grid = seconds(ours)
    again, _ = seconds(ours)
    first_atp, atp = seconds(attribution)
    again_atp, _ = seconds(attribution)
    reference = torch_reference()
    torch_time, expected = seconds(lambda: torch_grid(reference, clean, corrupted, layers, answer, wrong))
    cells = layers * args.tokens
    results = {
        "model": "smollm2", "site": "resid_pre", "layers": layers, "tokens": args.tokens, "cells": cells,
        "jaxinterp_first_s": first, "jaxinterp_s": again, "attribution_first_s": first_atp, "attribution_s": again_atp,
        "torch_hook_loop_s": torch_time, "speedup_vs_torch_hook_loop": torch_time / again,
        "speedup_vs_torch_hook_loop_with_compile": torch_time / first, "attribution_vs_grid": again / again_atp,
        "max_abs_difference_torch": float(np.abs(grid - expected).max()),
        "metric_range": float(np.ptp(grid)),
        "attribution_correlation": float(np.corrcoef(grid.ravel(), atp.ravel())[0, 1]),
    }
    try:
        results["transformer_lens"] = importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:
        results["transformer_lens"] = "not installed"
    else:
        bridge = transformer_lens_bridge(reference, model.tokenizer)
        tl_time, tl_grid = seconds(lambda: transformer_lens_grid(bridge, clean, corrupted, answer, wrong))
        results.update({"transformer_lens_loop_s": tl_time,
                        "speedup_vs_transformer_lens": tl_time / again,
                        "max_abs_difference_transformer_lens": float(np.abs(grid - tl_grid).max())})
    print(f"resid_pre grid: {layers} layers x {args.tokens} positions = {cells} cells, {jax.devices()[0].platform}")
    print(f"  PyTorch hook loop:          {torch_time:8.2f} s")
    if "transformer_lens_loop_s" in results:
        print(f"  TransformerLens loop:       {results['transformer_lens_loop_s']:8.2f} s")
    print(f"  jaxinterp sweep:            {again:8.2f} s  (first call {first:.2f} s)  "
          f"speed-up x{torch_time / again:.2f} (x{torch_time / first:.2f} with the compile)")
    print(f"  attribution patching:       {again_atp:8.2f} s  (first call {first_atp:.2f} s)  "
          f"x{again / again_atp:.1f} faster than the exact grid, correlation {results['attribution_correlation']:.3f}")
    print(f"  max |ours - PyTorch| over the grid: {results['max_abs_difference_torch']:.2e} "
          f"(metric range {results['metric_range']:.2f})")
    write_results(args.out, results)

if __name__ == "__main__":
    main()
