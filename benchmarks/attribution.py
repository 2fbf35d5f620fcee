"""Attribution speed: every layer's LLaVA-CAM from one backward, and smooth CAM batched vs looped.

    python -m benchmarks.attribution [--rows 8] [--samples 50] [--deep-layers 12]

1. LLaVA-CAM at `blocks.*.resid_mid` of every decoder layer in one call (one forward, one
   backward) against one call per layer, and against a single layer alone: the all-layer
   call should cost at most 1.5x one layer, far less than the per-layer loop. Measured on the
   trained small VLM (`jaxinterp.small_vlm`, 2 decoder layers) and on a deeper random VLM of
   the same width (`--deep-layers` decoder layers), where the layer count matters.
2. Smooth LLaVA-CAM with N noisy copies as one batched (vmapped) call against N calls of the
   plain map on the noisy images in a Python loop: target at least 5x on CPU.

All times are medians after a warm-up call (compilation excluded), from the same run, written to
`--out` (results/attribution_speed/results.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax

import jaxinterp
from benchmarks.common import median_seconds, write_results
from jaxinterp.small_vlm import load_small_vlm, pairs
from jaxinterp.attribution import attribute
from jaxinterp.attribution.gradcam import pixel_noise_scale
from jaxinterp.data import shapes
from jaxinterp.models import init_params
from jaxinterp.multimodal import encode


def deeper(model: jaxinterp.Model, layers: int) -> jaxinterp.Model:
    """A random model like `model` with `layers` decoder layers."""
    config = dataclasses.replace(model.config, text=dataclasses.replace(model.config.text, num_layers=layers))
    return jaxinterp.Model(config, init_params(config, jax.random.key(0)), model.tokenizer, processor=model.processor)


def timed(fn, repeats: int) -> float:
    return median_seconds(lambda: jax.block_until_ready(fn().image), repeats=repeats)


def all_layers(model: jaxinterp.Model, batch, repeats: int) -> dict:
    """Seconds of every layer at once, of one layer alone (the first: the longest backward), and of the loop."""
    layers = model.config.num_layers
    every = timed(lambda: attribute(model, batch, method="llava_cam", site="blocks.*.resid_mid"), repeats)
    one = timed(lambda: attribute(model, batch, method="llava_cam", site="blocks.0.resid_mid"), repeats)
    loop = timed(lambda: [attribute(model, batch, method="llava_cam", site=f"blocks.{i}.resid_mid")
                          for i in range(layers)][-1], max(1, repeats // 2))
    return {"layers": layers, "all_layers_one_backward_s": every, "one_layer_s": one, "per_layer_loop_s": loop,
            "all_over_one_layer": every / one, "loop_over_all": loop / every}


def smooth(model: jaxinterp.Model, batch, samples: int, repeats: int) -> dict:
    """Seconds of N noisy copies in one batched call and in a loop of N plain calls."""
    batched = timed(lambda: attribute(model, batch, method="llava_cam", site="blocks.*.resid_mid", samples=samples),
                    repeats)
    noise = jax.random.normal(jax.random.key(0), (samples, *batch.pixels.shape))
    noise = noise * pixel_noise_scale(model, batch.pixels.shape[2], 0.1)
    noisy = [batch.replace(pixels=batch.pixels + n) for n in noise]
    looped = timed(lambda: [attribute(model, b, method="llava_cam", site="blocks.*.resid_mid") for b in noisy][-1],
                   max(1, repeats // 2))
    return {"samples": samples, "batched_s": batched, "looped_s": looped, "speedup": looped / batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8, help="questions per batch")
    parser.add_argument("--samples", type=int, default=50, help="noisy copies of the smooth variant")
    parser.add_argument("--deep-layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="results/attribution_speed/results.json")
    args = parser.parse_args()
    model = load_small_vlm("llava")
    rows = pairs(shapes.examples("heldout", -(-args.rows // 4), seed=3))[:args.rows]
    batch = encode(model, [q.text for _, q in rows], [e.image for e, _ in rows], answers=[q.answer for _, q in rows])
    results = {"device": str(jax.devices()[0]), "rows": args.rows, "tokens": int(batch.tokens.shape[1]),
               "trained_small_vlm": all_layers(model, batch, args.repeats),
               "deep_random_vlm": all_layers(deeper(model, args.deep_layers), batch, args.repeats),
               "smooth_llava_cam": smooth(model, batch, args.samples, args.repeats)}
    print(json.dumps(results, indent=2))
    for name in ("trained_small_vlm", "deep_random_vlm"):
        r = results[name]
        print(f"{name}: all {r['layers']} layers from one backward = {r['all_over_one_layer']:.2f}x one layer "
              f"(target <= 1.5x); per-layer passes take {r['loop_over_all']:.1f}x longer")
    s = results["smooth_llava_cam"]
    print(f"smooth LLaVA-CAM, N = {s['samples']}: batched {s['speedup']:.1f}x faster than looped (target >= 5x)")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
