"""Held-out accuracy of the small vision-language models (`jaxinterp.small_vlm`).

    python -m experiments.small_vlm [--eval-images 500] [--out results/small_vlm]

Trains (once, cached) or loads both kinds, answers every question of held-out scenes, and writes
results.json (accuracy per question kind, training time, examples), curves.png and samples.png.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from experiments.outputs import output_dir, plt, save_figure, save_json
from jaxinterp.data import shapes
from jaxinterp.small_vlm import KINDS, Settings, accuracy, answer, cache_entry, load_small_vlm, pairs, training_record

# Accuracy of always giving the most frequent answer of each kind (1 of 2, 4, 4, 3 balanced classes).
CHANCE = {"presence": 1 / 2, "colour": 1 / 4, "position": 1 / 4, "count": 1 / 3}


def _plot_curves(records: dict[str, dict], folder: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for kind, record in records.items():
        for ax, name in zip(axes, ("loss", "token_accuracy")):
            values = np.asarray(record["curves"][name])
            window = max(1, len(values) // 50)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(np.arange(len(smooth)) + window, smooth, label=kind)
            ax.set(xlabel="step", ylabel=name.replace("_", " "), title=f"training {name.replace('_', ' ')}")
    axes[0].set_yscale("log")
    axes[0].legend()
    save_figure(fig, folder, "curves.png")


def _plot_samples(data: list[shapes.Example], predicted: dict[str, list[str]], folder: str, count: int = 8) -> None:
    fig, axes = plt.subplots(2, count // 2, figsize=(3.2 * count // 2, 10), gridspec_kw={"hspace": 0.9})
    for i, (example, ax) in enumerate(zip(data, axes.flat)):
        ax.imshow(example.image, interpolation="nearest")
        for obj in example.objects:
            top, left, bottom, right = obj.box
            ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                       edgecolor="white", linewidth=1))
        lines = [q.text.replace(" ?", "?") for q in example.questions]
        for kind, answers in predicted.items():
            lines = [f"{line}\n  {kind}: {answers[4 * i + j]}" for j, line in enumerate(lines)]
        truth = ", ".join(q.answer for q in example.questions)
        ax.set_title(f"truth: {truth}", fontsize=7)
        ax.set_xlabel("\n".join(lines), fontsize=6, loc="left")
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, folder, "samples.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-images", type=int, default=500, help="held-out scenes (4 questions each)")
    parser.add_argument("--out", default="results/small_vlm")
    args = parser.parse_args()
    folder = output_dir(args.out)
    heldout = shapes.examples("heldout", args.eval_images, seed=1)
    rows = pairs(heldout)
    results, records, predicted = {"heldout_questions": len(rows), "chance": CHANCE, "models": {}}, {}, {}
    for kind in KINDS:
        settings = Settings(kind=kind)
        model = load_small_vlm(kind, settings)
        records[kind] = training_record(settings)
        started = time.perf_counter()
        predicted[kind] = answer(model, rows)
        results["models"][kind] = {
            "cache_entry": cache_entry(settings),
            "settings": records[kind]["settings"],
            "parameters": int(sum(x.size for x in jax.tree.leaves(model.params))),
            "train_seconds": records[kind]["train_seconds"],
            "encode_seconds": records[kind]["encode_seconds"],
            "eval_seconds": time.perf_counter() - started,
            "final_train_loss": float(np.mean(records[kind]["curves"]["loss"][-50:])),
            "heldout_accuracy": accuracy(rows, predicted[kind]),
            "examples": [{"question": q.text, "answer": q.answer, "predicted": p}
                         for (_, q), p in zip(rows[:12], predicted[kind])],
        }
        print(f"{kind}: trained in {records[kind]['train_seconds']:.0f} s; held-out accuracy",
              {k: round(v, 3) for k, v in results["models"][kind]["heldout_accuracy"].items()})
    save_json(folder, results)
    _plot_curves(records, folder)
    _plot_samples(heldout, predicted, folder)


if __name__ == "__main__":
    main()
