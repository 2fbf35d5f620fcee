"""Step-Saliency maps of SmolLM2 reasoning traces on arithmetic word problems, correct vs wrong.

    python -m experiments.step_saliency_arithmetic [--problems 32] [--out results/step_saliency_arithmetic]

Generates greedy chat traces (96 new tokens) for reasoning-gym chain sums told as word
problems, splits each into Q | T_1..T_n | S steps, computes the per-layer step maps (rule
`ag`, mean next-token loss over the filtered text, as in the paper's pipeline), and compares
correct with wrong traces layer by layer: final-heat anomaly (mean S-S over mean T-T),
Shallow Lock-in (bottom quarter) and Deep Decay (top quarter), with Welch t-tests.
Writes results.json, step_maps_correct.png, step_maps_wrong.png and layer_profile.png.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

import jaxinterp
from experiments import arithmetic_traces as traces
from experiments.markdown import number, p_value, signed, table
from experiments.outputs import output_dir, save_figure, save_json
from jaxinterp.methods import step_saliency as ss
from jaxinterp.methods.reasoning_segments import tokenize_trace
from jaxinterp.viz.step_maps import layer_curves, step_map_grid

MAX_STEPS = 16  # step maps are [16, 16]; tokens of later steps take part in no block
BUCKET = 64


def padded(rows: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-pad token/step rows to a multiple of BUCKET (pads: masked, step -1)."""
    width = -(-max(len(ids) for ids, _ in rows) // BUCKET) * BUCKET
    tokens = np.full((len(rows), width), pad_id, np.int32)
    steps = np.full((len(rows), width), -1, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for r, (ids, st) in enumerate(rows):
        tokens[r, :len(ids)], steps[r, :len(ids)], mask[r, :len(ids)] = ids, st, True
    return tokens, steps, mask


def report(results: dict) -> str:
    """The measured section of docs/step_saliency.md: accuracy of the traces, then the Shallow
    Lock-in and Deep Decay scores of correct and wrong traces with their Welch tests, Deep Decay again
    over the traces that have a summary step (a trace without one scores 0; no test recorded for that
    subset), and the per-layer final-heat anomaly summarised (layers where correct traces are higher,
    the smallest per-layer p). Means only: the results hold no interval."""
    n_correct, n_wrong = results["n_correct"], results["n_wrong"]
    lines = [f"{results['problems']} problems, {n_correct} answered correctly (accuracy {number(results['accuracy'])}); "
             f"mean {number(results['mean_steps'], 2)} steps per trace. Means of the per-trace scores; the results "
             "hold no interval.", ""]

    def span(layers):
        return f"layers {layers[0]}-{layers[-1]}"

    rows = [(f"{label} ({span(results[layers])})", number(results[key]["correct_mean"]),
             number(results[key]["wrong_mean"]), signed(results[key].get("welch_t")), p_value(results[key].get("p_value")))
            for label, key, layers in (("Shallow Lock-in", "shallow_lock_in", "shallow_layers"),
                                       ("Deep Decay", "deep_decay", "deep_layers"))]
    with_summary = [t for t in results["traces"] if "summary" in t["kinds"]]
    kept = {flag: [t["deep_decay"] for t in with_summary if t["correct"] is flag] for flag in (True, False)}
    rows.append((f"Deep Decay, traces with a summary step ({len(kept[True])} correct, {len(kept[False])} wrong)",
                 number(float(np.mean(kept[True]))) if kept[True] else "undefined",
                 number(float(np.mean(kept[False]))) if kept[False] else "undefined", "-", "-"))
    lines.append(table(["score", f"correct (n = {n_correct})", f"wrong (n = {n_wrong})", "Welch t", "Welch p"], rows))
    heat = results["final_heat_anomaly_per_layer"]
    higher = sum(c > w for c, w in zip(heat["correct_mean"], heat["wrong_mean"]))
    without = [t for t in results["traces"] if "summary" not in t["kinds"]]
    if without:
        lines += ["", f"Traces without a summary step: {len(without)}, {sum(not t['correct'] for t in without)} of them "
                      f"wrong; their mean Deep Decay is {number(float(np.mean([t['deep_decay'] for t in without])))}."]
    lines.append("")
    if heat.get("p_value") is not None:
        low = int(np.argmin(heat["p_value"]))
        lines.append(f"Final-heat anomaly, mean(S,S) / mean(T,T) per layer: higher for correct traces in {higher} of "
                     f"{len(heat['correct_mean'])} layers; smallest Welch p {p_value(heat['p_value'][low])} (layer {low}).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", default="results/step_saliency_arithmetic")
    args = parser.parse_args()
    folder = output_dir(args.out)
    model = jaxinterp.load("smollm2", progress=False)
    layers = model.config.num_layers
    items = traces.problems(args.problems, args.seed)
    generated = model.generate([traces.prompt(p) for p in items], args.new_tokens, chat=True)

    records = []
    for problem, text in zip(items, generated.texts):
        trace = traces.trace(problem, text)
        kinds = trace.kinds[:MAX_STEPS]
        ids, steps = tokenize_trace(model.tokenizer, trace)
        steps = np.where(steps < MAX_STEPS, steps, -1)  # steps past MAX_STEPS take part in no block
        records.append({"problem": problem.story, "answer": problem.answer, "completion": text,
                        "correct": traces.correct(problem, text), "kinds": kinds, "ids": ids, "steps": steps})
    for start in tqdm(range(0, len(records), args.batch), desc="saliency"):
        chunk = records[start:start + args.batch]
        tokens, steps, mask = padded([(r["ids"], r["steps"]) for r in chunk], model.pad_token_id)
        batch = jaxinterp.make_batch(tokens, mask)
        _, maps = ss.step_maps(model, batch, steps, num_steps=MAX_STEPS)
        for row, record in enumerate(chunk):
            n = len(record["kinds"])
            record["maps"] = np.asarray(maps[:, row, :n, :n])

    shallow, deep = ss.shallow_layers(layers), ss.deep_layers(layers)
    for r in records:
        profile = ss.layer_profile(r["maps"], r["kinds"])
        r["final_heat_anomaly"] = profile["final_heat_anomaly"]
        r["shallow_lock_in"] = ss.shallow_lock_in(r["maps"], r["kinds"], shallow)
        r["deep_decay"] = ss.deep_decay(r["maps"], r["kinds"], deep)
    groups = {"correct": [r for r in records if r["correct"]], "wrong": [r for r in records if not r["correct"]]}

    def compare(key):
        a = np.array([r[key] for r in groups["correct"]], np.float64)
        b = np.array([r[key] for r in groups["wrong"]], np.float64)
        out = {"correct_mean": a.mean(0) if len(a) else None, "wrong_mean": b.mean(0) if len(b) else None}
        if len(a) > 1 and len(b) > 1:
            out["welch_t"], out["p_value"] = stats.ttest_ind(a, b, equal_var=False)
        return out

    results = {
        "model": "smollm2", "problems": len(records), "accuracy": float(np.mean([r["correct"] for r in records])),
        "n_correct": len(groups["correct"]), "n_wrong": len(groups["wrong"]),
        "mean_steps": float(np.mean([len(r["kinds"]) for r in records])),
        "shallow_layers": shallow, "deep_layers": deep,
        "shallow_lock_in": compare("shallow_lock_in"), "deep_decay": compare("deep_decay"),
        "final_heat_anomaly_per_layer": compare("final_heat_anomaly"),
        "traces": [{k: r[k] for k in ("problem", "answer", "completion", "correct", "kinds", "shallow_lock_in",
                                      "deep_decay")} for r in records],
    }
    save_json(folder, results)
    shown = sorted({0, *shallow[-1:], layers // 2, *deep[:1], layers - 1})
    for label, members in groups.items():
        if members:
            example = max(members, key=lambda r: len(r["kinds"]))
            save_figure(step_map_grid(example["maps"], example["kinds"], shown,
                                      title=f"{label} trace: step-to-step saliency (ag, mean CE)"),
                        folder, f"step_maps_{label}.png")
    curves = {}
    for label, members in groups.items():
        if len(members) > 1:
            values = np.array([r["final_heat_anomaly"] for r in members])
            curves[f"{label} (n={len(members)})"] = np.stack([values.mean(0), values.std(0) / np.sqrt(len(values))])
    save_figure(layer_curves(curves, ylabel="final-heat anomaly  mean(S,S) / mean(T,T)",
                               title="Step-Saliency layer profile, SmolLM2"), folder, "layer_profile.png")
    for key in ("shallow_lock_in", "deep_decay"):
        print(f"{key}: correct {results[key]['correct_mean']}, wrong {results[key]['wrong_mean']}, "
              f"p {results[key].get('p_value')}")
    print(f"accuracy {results['accuracy']:.3f} ({results['n_correct']} correct / {results['n_wrong']} wrong)")


if __name__ == "__main__":
    main()
