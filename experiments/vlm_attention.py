"""Attention analysis and edits on the trained small VLM: sinks, EVAS, information flow, truncation.

    python -m experiments.vlm_attention [--images 100] [--kind llava] [--out results/vlm_attention]

The model is `jaxinterp.small_vlm`'s (trained once, then cached): 32 x 32 images of coloured
shapes, an 8 x 8 patch grid (64 image tokens), a two-block causal decoder. Held-out scenes
(`jaxinterp.data.shapes`, split `heldout`) with four questions each (presence, colour, position,
count); every span (image / question / answer) comes from the prompts' segments.

1. Sink density by layer (EVAS step 4): the share of image columns whose sink score exceeds beta,
   per head, at the paper's beta = 0.002 (set for LLaVA-1.5's ~620-token prompts) and at beta
   scaled to this prompt length (beta x 576 / image tokens: the same multiple of a uniform share).
2. EVAS on / off: greedy answers with EVAS on each decoder layer (the paper's layer 1 is this
   model's last) at both betas; exact-match accuracy per question kind, flips, McNemar p-value.
3. Information flow: attention mass from the image, question and template tokens to the answer
   tokens (teacher-forced), per layer, the LLaVA-CAM intensity per layer, and the suggested cliff layer.
4. Truncation sweep: with the image hidden from layer K on (R = 0, the paper's setting, and R = 8
   kept tokens, chosen on each prompt), for every K against K = L (no truncation): the exact match
   of the greedy answer generated under the edit (the paper's score, the headline), and, secondary,
   the teacher-forced exact match and answer log-prob of the gold answer (one `sweep` over K).

Every accuracy carries a bootstrap 95% interval over the questions (`experiments.intervals`), and
every comparison with the unedited model McNemar's exact test on the same questions.

Writes results.json, sinks_paper.png, sinks_scaled.png, flow.png and truncation.png.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from jaxinterp import small_vlm
from experiments.intervals import bootstrap_mean
from experiments.markdown import interval, number, p_value, table
from experiments.outputs import output_dir, plt, save_figure, save_json
from jaxinterp.data import shapes
from jaxinterp.methods.evas import evas, sink_profile
from jaxinterp.methods.infoflow import information_flow, llava_cam_intensity
from jaxinterp.methods.truncation import truncate, truncation_sweep
from jaxinterp.models import segment_id
from jaxinterp.viz import layer_head_heatmap

PAPER_BETA = 0.002
LLAVA_IMAGE_TOKENS = 576
SOURCES = ("image", "question", "prompt")


def chunks(rows: list, size: int):
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def generate(model, rows, edits: tuple | Callable, chunk: int) -> list[str]:
    """Greedy answers (as `small_vlm.answer`) under the tuple `edits`, or under `edits(prompts)`
    for edits that depend on each chunk's prompts (truncation's kept tokens)."""
    texts = []
    for part in tqdm(list(chunks(rows, chunk)), desc="answering", leave=False):
        batch = small_vlm.prompts(model, part)
        texts += model.generate(batch, max_new_tokens=small_vlm.ANSWER_LENGTH,
                                edits=edits if isinstance(edits, tuple) else edits(batch)).texts
    return [t.strip() for t in texts]


def mcnemar(base: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Flips each way and the exact McNemar p-value of two paired correctness vectors."""
    fixed, broken = int(np.sum(~base & other)), int(np.sum(base & ~other))
    p = stats.binomtest(fixed, fixed + broken).pvalue if fixed + broken else 1.0
    return {"fixed": fixed, "broken": broken, "mcnemar_exact_p": float(p)}


def _beta(results: dict, label: str) -> str:
    """An EVAS label "layer L, beta NAME" with the beta's value."""
    layer, name = label.split(", beta ")
    return f"{layer}, beta {number(results['betas'][name])} ({name})"


def _accuracy(correct) -> str:
    """Exact match over the questions with its bootstrap 95% interval."""
    return interval(bootstrap_mean(np.asarray(correct, float)))


def _tests(test: dict) -> tuple[str, str]:
    return f"{test['fixed']} / {test['broken']}", p_value(test["mcnemar_exact_p"])


def sink_table(results: dict) -> str:
    """[layer, head] image sink density (share of the image columns whose sink score exceeds beta,
    mean over the teacher-forced questions) at each beta."""
    rows = [(f"{number(results['betas'][name])} ({name})", layer, *(number(d) for d in heads))
            for name, density in results["sink_density"].items() for layer, heads in enumerate(density)]
    heads = len(next(iter(results["sink_density"].values()))[0])
    return table(["beta", "layer", *(f"head {h}" for h in range(heads))], rows)


def _header(results: dict) -> str:
    return (f"Small VLM `{results['model'].rsplit('/', 1)[-1]}`: {results['questions']} held-out questions, "
            f"{results['image_tokens']} image tokens each; "
            f"unedited greedy accuracy {number(results['evas']['off']['accuracy']['overall'])}.")


def report(results: dict) -> str:
    """The measured section of docs/evas.md: greedy accuracy (overall and per question kind) with EVAS
    off and on each layer at both betas, with the flips and McNemar's exact test against EVAS off on
    the same questions, then the image sink density per layer and head."""
    evas = results["evas"]
    kinds = [k for k in evas["off"]["accuracy"] if k != "overall"]
    rows = []
    for label, entry in evas.items():
        tests = ("-", "-") if label == "off" else _tests(entry)
        overall = _accuracy(entry["correct"]) if "correct" in entry else number(entry["accuracy"]["overall"])
        rows.append(("off" if label == "off" else _beta(results, label), overall,
                     *(number(entry["accuracy"][k]) for k in kinds), *tests, entry["answers_changed"]))
    return "\n".join([_header(results), "",
                      table(["EVAS", f"accuracy (n = {results['questions']})", *kinds,
                             "fixed / broken vs off", "McNemar p", "answers changed"], rows), "",
                      sink_table(results)])


def flow_table(results: dict) -> str:
    """Attention mass from each source segment to the teacher-forced answer per layer, with the
    LLaVA-CAM intensity per layer."""
    flow = results["information_flow"]
    intensity = flow["llava_cam_intensity"]
    rows = [(layer, *(number(m) for m in mass), number(intensity[layer], 7))
            for layer, mass in enumerate(flow["mass"])]
    names = {"prompt": "chat template (`prompt`)"}
    return table(["layer", *(f"mass from {names.get(s, s)}" for s in flow["sources"]), "LLaVA-CAM intensity"], rows)


def report_flow(results: dict) -> str:
    """The measured section of docs/information_flow_truncation.md: information flow per layer with
    the LLaVA-CAM intensity and the suggested cliff layer of each chunk, then the truncation sweep
    per first truncated layer K: the generated answers' exact match (with intervals, flips and
    McNemar's exact test against no truncation on the same questions) where the results hold it,
    and the teacher-forced exact match and answer log-prob."""
    cliffs = results["information_flow"]["cliff_per_chunk"]
    found = ", ".join("none" if c is None else f"layer {c}" for c in cliffs)
    generated = all("generated" in sweep for sweep in results["truncation"].values())
    rows = []
    for label, sweep in results["truncation"].items():
        last = sweep["K"][-1]
        for i, k in enumerate(sweep["K"]):
            cells = [label.split("=")[1], f"{k} (no truncation)" if k == last else k]
            for part in (("generated", "teacher_forced") if generated else ("teacher_forced",)):
                scores = sweep[part] if part in sweep else sweep  # files before generated answers were scored
                accuracy = _accuracy(scores["correct"][i]) if "correct" in scores else number(scores["accuracy"][i])
                cells += [accuracy, *(("-", "-") if k == last else _tests(scores["vs_no_truncation"][i]))]
            rows.append((*cells, number(sweep.get("teacher_forced", sweep)["answer_log_prob"][i])))
    n = results["questions"]
    header = ["kept image tokens (R)", "first layer without the image (K)"]
    if generated:
        header += [f"generated exact match (n = {n})", "fixed / broken", "McNemar p"]
    header += [f"teacher-forced exact match (n = {n})", "fixed / broken", "McNemar p", "answer log-prob"]
    return "\n".join([_header(results), "", flow_table(results), "",
                      f"Suggested cliff layer, per chunk of questions ({len(cliffs)} chunks): {found}.", "",
                      table(header, rows)])


def report_sinks(results: dict) -> str:
    """The small-VLM part of docs/attention_statistics.md's measured section: image sink density per
    layer and head at both betas, and the attention mass each segment sends the answer per layer."""
    return "\n".join([f"Small VLM `{results['model'].rsplit('/', 1)[-1]}`: {results['questions']} teacher-forced "
                      f"held-out questions, {results['image_tokens']} image tokens each.", "",
                      sink_table(results), "", flow_table(results)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="held-out scenes (4 questions each)")
    parser.add_argument("--kind", default="llava", choices=["llava"], help="the causal small VLM")
    parser.add_argument("--chunk", type=int, default=100, help="questions per forward")
    parser.add_argument("--out", default="results/vlm_attention")
    args = parser.parse_args()
    folder = output_dir(args.out)
    model = small_vlm.load_small_vlm(args.kind)
    rows = small_vlm.pairs(shapes.examples("heldout", args.images, seed=1))
    layers = model.config.num_layers
    teacher = [small_vlm.prompts(model, part, answers=True) for part in chunks(rows, args.chunk)]
    image_tokens = int(np.sum(np.asarray(teacher[0].segments[0]) == segment_id("image")))
    betas = {"paper": PAPER_BETA, "scaled": PAPER_BETA * LLAVA_IMAGE_TOKENS / image_tokens}
    results = {"model": small_vlm.cache_entry(small_vlm.Settings(kind=args.kind)), "questions": len(rows),
               "image_tokens": image_tokens, "betas": betas}

    print("1. sink density by layer")
    density = {name: np.concatenate([sink_profile(model, b, beta=beta) for b in teacher], axis=1).mean(axis=1)
               for name, beta in betas.items()}
    results["sink_density"] = {name: d.tolist() for name, d in density.items()}

    print("2. EVAS on / off")
    truth = np.array([q.answer for _, q in rows])
    answers = {"off": generate(model, rows, (), args.chunk)}
    for layer in range(layers):
        for name, beta in betas.items():
            answers[f"layer {layer}, beta {name}"] = generate(model, rows, (evas(model, layers=(layer,), beta=beta),),
                                                              args.chunk)
    right = {label: np.array(texts) == truth for label, texts in answers.items()}
    results["evas"] = {label: {"accuracy": small_vlm.accuracy(rows, texts), "correct": right[label].tolist(),
                               **({} if label == "off" else mcnemar(right["off"], right[label])),
                               "answers_changed": int(np.sum(np.array(texts) != np.array(answers["off"])))}
                       for label, texts in answers.items()}

    print("3. information flow")
    flows = [information_flow(model, b, sources=SOURCES, intensity=llava_cam_intensity) for b in teacher]
    mass = np.nanmean(np.stack([f.mass for f in flows]), axis=0)
    results["information_flow"] = {"sources": list(SOURCES), "mass": mass.tolist(),
                                   "llava_cam_intensity": np.mean([f.intensity for f in flows], axis=0).tolist(),
                                   "cliff_per_chunk": [f.cliff for f in flows]}

    print("4. truncation sweep")
    starts = list(range(layers + 1))
    results["truncation"] = {}
    for count in (0, 8):
        found = [truncation_sweep(model, b, starts, count=count) for b in teacher]
        forced = np.concatenate([f["correct"] for f in found], axis=1)  # [K, questions]
        made = np.stack([np.array(generate(model, rows, lambda batch, k=k: (truncate(model, batch, start=k, count=count),),
                                           args.chunk)) == truth for k in starts])
        results["truncation"][f"R={count}"] = {
            "K": starts,
            "generated": {"correct": made.tolist(), "vs_no_truncation": [mcnemar(made[-1], m) for m in made]},
            "teacher_forced": {"correct": forced.tolist(), "vs_no_truncation": [mcnemar(forced[-1], f) for f in forced],
                               "answer_log_prob": np.concatenate([f["log_prob"] for f in found], axis=1).mean(1).tolist()}}
    save_json(folder, results)
    _figures(density, mass, results, folder)


def _figures(density: dict[str, np.ndarray], mass: np.ndarray, results: dict, folder: str) -> None:
    for name, values in density.items():
        fig = layer_head_heatmap(values, title=f"image sink density (beta {results['betas'][name]:.4f})",
                                 colorbar="sink density", vmin=0, vmax=1)
        save_figure(fig, folder, f"sinks_{name}.png")
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for i, source in enumerate(SOURCES):
        ax.plot(np.arange(mass.shape[0]), mass[:, i], marker="o", label=source)
    ax.set(xlabel="layer", ylabel="attention mass to the answer", title="information flow into the answer")
    ax.set_xticks(range(mass.shape[0]))
    ax.legend()
    save_figure(fig, folder, "flow.png")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for label, sweep in results["truncation"].items():
        for part, style in (("generated", "-"), ("teacher_forced", ":")):
            axes[0].plot(sweep["K"], np.mean(sweep[part]["correct"], axis=1), style, marker="o",
                         label=f"{label}, {part.replace('_', '-')}")
        axes[1].plot(sweep["K"], sweep["teacher_forced"]["answer_log_prob"], marker="o", label=label)
    for ax, name in zip(axes, ("answer exact match", "teacher-forced answer log-prob")):
        ax.set(xlabel="first layer without the image (K; K = L: none)", ylabel=name)
        ax.set_xticks(results["truncation"]["R=0"]["K"])
    axes[0].legend()
    save_figure(fig, folder, "truncation.png")


if __name__ == "__main__":
    main()
