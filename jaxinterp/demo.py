"""`jaxinterp demo`: the main job on the embedded default model.

Answers a chat prompt with greedy decoding (streamed as it is generated), measures the
normalised attention entropy of every head over the prompt (1 = uniform over the visible
keys), prints it as a layer x head table, and writes `demo.png` (heatmap) and `demo.json`.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from jaxinterp.attention import head_statistics
from jaxinterp.generate import stream_printer
from jaxinterp.model import Model
from jaxinterp.viz import layer_head_heatmap

DEFAULT_PROMPT = "What is the capital of France?"


def format_table(values: np.ndarray) -> str:
    """A layer x head table with two decimals."""
    header = "layer " + " ".join(f"h{h:<4d}" for h in range(values.shape[1]))
    rows = [f"{i:5d} " + " ".join(f"{v:5.2f}" for v in row) for i, row in enumerate(values)]
    return "\n".join([header, *rows])


def run_demo(model: Model, *, prompt: str = DEFAULT_PROMPT, out: str = "jaxinterp-demo", max_new_tokens: int = 48) -> dict:
    """Runs the demo and returns what it wrote to demo.json."""
    os.makedirs(out, exist_ok=True)
    print(f"model: {model}")
    print(f"prompt: {prompt}\nanswer: ", end="", flush=True)
    start = time.perf_counter()
    generation = model.generate(prompt, max_new_tokens, chat=True, stream=stream_printer(model.tokenizer))
    seconds = time.perf_counter() - start
    print(f"\n({len(generation.tokens[0])} tokens in {seconds:.1f} s, including compilation)\n")
    entropy = head_statistics(model, model.encode(prompt, chat=True))["entropy"]
    print("normalised attention entropy over the prompt (1 = uniform over visible keys):")
    print(format_table(entropy))
    png, js = os.path.join(out, "demo.png"), os.path.join(out, "demo.json")
    layer_head_heatmap(
        entropy, title=f"Normalised attention entropy over the prompt\n{model.source}: {prompt!r}",
        colorbar="entropy / log(visible keys)", path=png, vmin=0.0, vmax=1.0,
    )
    result = {
        "model": model.source,
        "prompt": prompt,
        "answer": generation.texts[0],
        "answer_tokens": generation.tokens[0],
        "generation_seconds": seconds,
        "entropy": entropy.round(6).tolist(),
        "entropy_by_layer": entropy.mean(axis=1).round(6).tolist(),
    }
    with open(js, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {png} and {js}")
    return result
