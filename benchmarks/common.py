"""Shared helpers of the benchmarks: timing, the PyTorch reference, a fixed prompt."""

from __future__ import annotations

import os
import statistics
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
