"""Shared helpers of the benchmarks: timing, the PyTorch reference, a fixed prompt, where and how results are recorded."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np


def median_seconds(fn: Callable[[], object], *, repeats: int = 10, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_reference(dtype: str = "float32"):
    """transformers' PyTorch SmolLM2, dequantised from the same GGUF file as ours into dense weights, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    from jaxinterp.cache import builtin_source

    path = builtin_source("smollm2")
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=getattr(torch, dtype),
        quantization_config=GgufConfig(dequantize=True),  # a plain dense model, like ours
    )
    return model.eval()


def prompt_tokens(tokenizer, length: int) -> np.ndarray:
    """[1, length] token ids of a fixed English text, repeated as needed."""
    text = (
        "The history of science is the study of the development of science and scientific knowledge, "
        "including both the natural and social sciences. "
    )
    ids = tokenizer(text * 64)["input_ids"]
    return np.array([ids[:length]], np.int32)


def machine() -> dict[str, object]:
    """Where the figures were measured: platform, cores, CPU model and the instruction sets that
    change the picture (bfloat16 products run natively only with AVX512-BF16 or AMX), devices."""
    import jax

    cpu, flags = platform.processor(), []
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            lines = info.read().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    found = {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": cpu,
             "cpu_features": [flag for flag in wanted if flag in flags],
             "jax": jax.__version__, "jax_device": jax.devices()[0].device_kind}
    if "torch" in sys.modules:  # the reference side, where the benchmark ran one
        torch = sys.modules["torch"]
        found.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return found


def write_results(path: str, results: dict) -> None:
    """Write `results` (with `machine()` added) as indented JSON to `path`, creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": machine(), **results}, f, indent=1)
    print(f"wrote {path}")
