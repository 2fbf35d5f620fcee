"""Accelerator benchmark: jaxinterp against PyTorch eager (and torch.compile) on the same device.

One random Llama (TinyLlama-1.1B shapes on a GPU/TPU, a tiny one on CPU so CI proves the
script starts) is built in PyTorch and converted into jaxinterp in memory, so both run the
same weights in bfloat16. Measured in one run, each with its first-call (compile) time:

- prefill forward tokens/s and model FLOPs utilisation at `--prefill` tokens (jaxinterp's
  fused attention path and its materialised one, PyTorch eager with SDPA, torch.compile),
- greedy generation tokens/s at batch 1 and 32,
- `grad` of the last token's log-sum-exp w.r.t. every block's `resid_post` (PyTorch: the
  same objective with `retain_grad` on each decoder layer's output),
- a 64-row `sweep` of steering vectors against a loop of hooked PyTorch forwards.

Every section is timed and recorded on its own; a failing section records its error and
the others still run. Results go to `--out` as JSON and are printed as a table.

    python -m benchmarks.device [--out results/device/NAME.json] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import traceback
from collections.abc import Callable

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave device memory to PyTorch too

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxinterp as ji  # noqa: E402
from benchmarks.common import median_seconds  # noqa: E402

# Shapes: TinyLlama-1.1B on an accelerator; a tiny model on CPU (the script must start in CI).
SIZES = {
    "accelerator": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096),
    "cpu": dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
}
RUNS = {  # prefill tokens, generation prompt and new tokens, sweep rows and tokens
    "accelerator": dict(prefill=2048, prompt=128, new_tokens=128, batches=(1, 32), rows=64, sweep_tokens=128),
    "cpu": dict(prefill=128, prompt=16, new_tokens=8, batches=(1, 4), rows=8, sweep_tokens=16),
}
# Nominal dense bfloat16 peak of known devices (FLOP/s), for model FLOPs utilisation.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "TPU v5 lite": 197e12, "TPU v4": 275e12}


class Timer:
    """Median time of a callable on the device, synchronising JAX and CUDA."""

    def __init__(self, repeats: int):
        self.repeats = repeats

    def __call__(self, fn: Callable[[], object]) -> tuple[float, float]:
        """(first call seconds, median seconds of later calls)."""
        start = time.perf_counter()
        _sync(fn())
        first = time.perf_counter() - start
        return first, median_seconds(lambda: _sync(fn()), repeats=self.repeats)


def _sync(value) -> None:
    import torch

    jax.block_until_ready(value)
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(size: str, device: str):
    """(torch model in bf16 on `device`, the same weights as a jaxinterp model in bf16)."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**SIZES[size], eos_token_id=None, bos_token_id=None, pad_token_id=0,
                                      tie_word_embeddings=False)
    reference = transformers.LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16).eval()
    model = ji.load(reference, dtype="bfloat16", progress=False)
    return reference, model


def flops_per_token(model: ji.Model, tokens: int) -> float:
    """Forward FLOPs per token: 2 x matrix parameters (embedding lookup excluded) plus attention's 4 L T D."""
    cfg = model.config
    matrices = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(model.params)
                   if x.ndim >= 2 and "embed" not in jax.tree_util.keystr(path))
    return 2 * matrices + 4 * cfg.num_layers * tokens * cfg.num_heads * cfg.head_dim


def ids(rows: int, tokens: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, vocab, (rows, tokens)).astype(np.int32)


def _throughput(out: dict, model: ji.Model, tokens: int, names: tuple[str, ...]) -> dict:
    """Adds tokens/s and TFLOP/s of each timed entry `{name}_s` of a prefill of `tokens` tokens."""
    flops = flops_per_token(model, tokens) * tokens
    for name in names:
        out[f"{name}_tokens_per_s"] = tokens / out[f"{name}_s"]
        out[f"{name}_tflops"] = flops / out[f"{name}_s"] / 1e12
    return out


def prefill(model, reference, run, timer) -> dict:
    import torch

    tokens = ids(1, run["prefill"], model.config.vocab_size)
    torch_ids = torch.as_tensor(tokens, device=reference.device).long()
    materialise = ji.FunctionEdit(("blocks.*.attn.probs",), lambda probs, ctx, args: probs)
    out = {"tokens": run["prefill"]}
    out["jaxinterp_first_s"], out["jaxinterp_s"] = timer(lambda: model(tokens))
    out["materialised_first_s"], out["materialised_s"] = timer(lambda: model(tokens, edits=materialise))
    with torch.no_grad():
        out["torch_first_s"], out["torch_s"] = timer(lambda: reference(input_ids=torch_ids).logits)
        ours = np.asarray(model(tokens[:, :64]), np.float32)
        theirs = reference(input_ids=torch_ids[:, :64]).logits.float().cpu().numpy()
    out["max_abs_logit_difference_64_tokens"] = float(np.abs(ours - theirs).max())
    out["logit_scale"] = float(np.abs(theirs).max())
    out["speedup"] = out["torch_s"] / out["jaxinterp_s"]
    return _throughput(out, model, run["prefill"], ("jaxinterp", "materialised", "torch"))


def compiled_prefill(model, reference, run, timer) -> dict:
    """torch.compile of the same prefill (last: its compile is the slowest step of the script)."""
    import torch

    tokens = ids(1, run["prefill"], model.config.vocab_size)
    torch_ids = torch.as_tensor(tokens, device=reference.device).long()
    compiled = torch.compile(reference)
    with torch.no_grad():
        first, seconds = timer(lambda: compiled(input_ids=torch_ids).logits)
    out = {"tokens": run["prefill"], "torch_compile_first_s": first, "torch_compile_s": seconds}
    return _throughput(out, model, run["prefill"], ("torch_compile",))


def generation(model, reference, run, timer) -> dict:
    import torch

    out = {}
    for batch in run["batches"]:
        prompt = ids(batch, run["prompt"], model.config.vocab_size, seed=batch)
        new = run["new_tokens"]
        first, ours = timer(lambda: model.generate(ji.make_batch(prompt), max_new_tokens=new).prompt.tokens)
        torch_prompt = torch.as_tensor(prompt, device=reference.device).long()
        with torch.no_grad():
            generate = lambda: reference.generate(torch_prompt, max_new_tokens=new, min_new_tokens=new,  # noqa: E731
                                                  do_sample=False, pad_token_id=0)
            torch_first, theirs = timer(generate)
        out[f"batch_{batch}"] = {"jaxinterp_first_s": first, "jaxinterp_tokens_per_s": batch * new / ours,
                                 "torch_first_s": torch_first, "torch_tokens_per_s": batch * new / theirs,
                                 "speedup": theirs / ours}
    return out


def gradient(model, reference, run, timer) -> dict:
    import torch

    tokens = ids(1, run["prefill"], model.config.vocab_size, seed=7)
    objective = lambda r: jax.nn.logsumexp(r.logits[0, -1])  # noqa: E731

    first, ours = timer(lambda: model.grad(objective, tokens, wrt=["blocks.*.resid_post"])[1])
    remat_first, remat = timer(lambda: model.grad(objective, tokens, wrt=["blocks.*.resid_post"], remat=True)[1])
    torch_ids = torch.as_tensor(tokens, device=reference.device).long()
    kept = []

    def keep(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden.retain_grad()
        kept.append(hidden)

    hooks = [layer.register_forward_hook(keep) for layer in reference.model.layers]

    def torch_grad():
        kept.clear()
        reference.zero_grad(set_to_none=True)
        torch.logsumexp(reference(input_ids=torch_ids).logits[0, -1].float(), dim=-1).backward()
        return [h.grad for h in kept]

    try:
        torch_first, theirs = timer(torch_grad)
    finally:
        for hook in hooks:
            hook.remove()
    return {"tokens": run["prefill"], "jaxinterp_first_s": first, "jaxinterp_tokens_per_s": run["prefill"] / ours,
            "remat_first_s": remat_first, "remat_tokens_per_s": run["prefill"] / remat,
            "torch_first_s": torch_first, "torch_tokens_per_s": run["prefill"] / theirs, "speedup": theirs / ours}


def steering_sweep(model, reference, run, timer) -> dict:
    import torch

    layer = model.config.num_layers // 2
    tokens = ids(1, run["sweep_tokens"], model.config.vocab_size, seed=3)
    vectors = jax.random.normal(jax.random.key(0), (run["rows"], model.config.hidden_size), jnp.bfloat16)

    def steered(batch, vector):
        return model(batch, edits=ji.AddToResidual(layer=layer, vector=vector))[:, -1]

    batch = model.batch(tokens)
    first, ours = timer(lambda: ji.sweep(steered, batch, vectors, progress=False))
    torch_ids = torch.as_tensor(tokens, device=reference.device).long()
    torch_vectors = torch.as_tensor(np.asarray(vectors, np.float32), device=reference.device).to(torch.bfloat16)
    current = {}

    def add(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + current["v"],) + tuple(output[1:])
        return output + current["v"]

    hook = reference.model.layers[layer].register_forward_hook(add)

    def loop():
        rows = []
        with torch.no_grad():
            for vector in torch_vectors:
                current["v"] = vector
                rows.append(reference(input_ids=torch_ids).logits[:, -1])
        return torch.stack(rows)

    try:
        torch_first, theirs = timer(loop)
    finally:
        hook.remove()
    return {"rows": run["rows"], "tokens": run["sweep_tokens"], "jaxinterp_first_s": first, "jaxinterp_s": ours,
            "torch_loop_first_s": torch_first, "torch_loop_s": theirs, "speedup": theirs / ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/device/latest.json")
    parser.add_argument("--size", choices=sorted(SIZES), help="default: accelerator shapes unless JAX runs on CPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    args = parser.parse_args()
    import torch

    backend = jax.default_backend()
    size = args.size or ("cpu" if backend == "cpu" else "accelerator")
    device = "cuda" if torch.cuda.is_available() and backend == "gpu" else "cpu"
    kind = jax.devices()[0].device_kind
    results = {"device": kind, "backend": backend, "size": size, "jax": jax.__version__, "torch": torch.__version__,
               "python": platform.python_version(), "config": SIZES[size], "runs": RUNS[size]}
    peak = next((value for name, value in PEAK_BF16.items() if name in kind), None)
    start = time.perf_counter()
    reference, model = build(size, device)
    results["build_s"] = time.perf_counter() - start
    results["parameters"] = sum(x.size for x in jax.tree.leaves(model.params))
    timer, run = Timer(args.repeats), RUNS[size]
    sections = {
        "prefill": lambda: prefill(model, reference, run, timer),
        "generate": lambda: generation(model, reference, run, timer),
        "grad": lambda: gradient(model, reference, run, timer),
        "sweep": lambda: steering_sweep(model, reference, run, timer),
    }
    if not args.no_compile and device != "cpu":
        sections["torch_compile"] = lambda: compiled_prefill(model, reference, run, timer)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for name, section in sections.items():
        began = time.perf_counter()
        try:
            results[name] = section()
        except Exception as error:  # a section's failure is a result too; the others still run
            results[name] = {"error": f"{type(error).__name__}: {error}"[:2000], "traceback": traceback.format_exc()[-4000:]}
        results[name]["section_s"] = time.perf_counter() - began
        print(f"{name}: {json.dumps({k: v for k, v in results[name].items() if k != 'traceback'}, default=float)}",
              flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=float)
    if peak and "jaxinterp_tflops" in results["prefill"]:
        results["prefill"]["jaxinterp_mfu"] = results["prefill"]["jaxinterp_tflops"] * 1e12 / peak
        results["peak_bf16_flops"] = peak
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1, default=float)
    print(f"{kind} ({backend}), {results['parameters'] / 1e9:.2f}B parameters, written to {args.out}")


if __name__ == "__main__":
    main()
