"""Visual attribution on the trained small VLMs, scored against the known objects.

    python -m experiments.attribution_vlm [--scenes 40] [--out results/attribution_vlm]

Both models of `jaxinterp.small_vlm` (a causal tiny LLaVA and a LLaDA-V-style diffusion
MLLM, 8 x 8 patch grids over 32 x 32 images) answer every question of held-out synthetic
scenes; each method then explains the model's own answer and its map is scored against the
pixels of the objects the answer depends on (`Question.objects`): Obj-IoU (Otsu), Contrast,
Concentration, F3 and the pointing game (`jaxinterp.attribution.localisation`), averaged
over the questions; for the causal model also deletion/insertion AUCs of the answer's
probability. The diffusion model adds Diffusion-CAM's ablation rows (baseline, +AKD, +DACG,
+CBA, +SICD, all) at the structurally valid step where the target token was decided, and
the full method on the finished answer.

Sites (2-block decoders): the gradient CAMs read `blocks.0.mlp.in` (the post-attention norm's
output, LLaVA-CAM's hook point), Diffusion-CAM `blocks.0.resid_post` (the block output, a third of the
depth as in the reference), Score-CAM `projector.out`, gradient x input and integrated gradients
`embed` (IG from the pad token's embedding, 32 Gauss-Legendre steps); LLaVA-CAM's per-layer
scores come from one backward over `blocks.*.mlp.in`. Every metric is kept per question, so each
mean carries a bootstrap 95% interval and each "best vs runner-up" a paired one
(`experiments.intervals`). Writes results.json, F3 bar charts, example overlays and one HTML report.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.intervals import bootstrap_mean, paired_difference
from experiments.markdown import interval, number, table
from experiments.outputs import output_dir, plt, save_figure, save_json
from jaxinterp.small_vlm import ANSWER_LENGTH, load_small_vlm, pairs, prompts
from jaxinterp.attribution import Contrast, Tokens, attribute, deletion_insertion, localisation
from jaxinterp.attribution import diffusion_cam as dc
from jaxinterp.data import shapes
from jaxinterp.diffusion import sample
from jaxinterp.multimodal import encode
from jaxinterp.viz import attribution_report, layer_grid

CAM_SITE = "blocks.0.mlp.in"
BASELINES = [  # (row name, method, options)
    ("Grad-CAM", "grad_cam", {"site": CAM_SITE}),
    ("Grad-CAM++", "grad_cam_pp", {"site": CAM_SITE}),
    ("LLaVA-CAM", "llava_cam", {"site": CAM_SITE}),
    ("LLaVA-CAM smooth (N=50)", "llava_cam", {"site": CAM_SITE, "samples": 50}),
    ("Score-CAM", "score_cam", {"site": "projector.out"}),
    ("TAM", "tam", {}),
    ("Attention rollout", "rollout", {}),
    ("Gradient x input", "grad_x_input", {"site": "embed"}),
    ("Integrated gradients", "integrated_gradients", {"site": "embed", "steps": 32}),
]
ABLATIONS = [("baseline", ()), ("+AKD", ("akd",)), ("+DACG", ("dacg",)), ("+CBA", ("cba",)), ("+SICD", ("sicd",)),
             ("all", dc.MODULES)]
METRICS = ("obj_iou", "contrast", "concentration", "f3", "pointing")
MAX_OBJECTS = 3


def object_masks(rows: list[tuple[shapes.Example, shapes.Question]]) -> np.ndarray:
    """[B, 3, H, W] bool: the drawn pixels of each object the answer depends on (all-false padding)."""
    size = rows[0][0].image.shape[0]
    masks = np.zeros((len(rows), MAX_OBJECTS, size, size), bool)
    for r, (example, question) in enumerate(rows):
        lit = example.image.sum(-1) > 0
        for k, index in enumerate(question.objects):
            top, left, bottom, right = example.objects[index].box
            masks[r, k, top:bottom, left:right] = lit[top:bottom, left:right]
    return masks


def scores(maps: jax.Array, masks: np.ndarray, kinds: list[str]) -> dict:
    """Mean localisation metrics of maps [B, rows, cols] (and Obj-IoU / F3 per question kind), with
    every metric per question under "per_item"."""
    per_row = jax.vmap(localisation)(jnp.asarray(maps, jnp.float32), jnp.asarray(masks))
    out = {name: float(np.mean(per_row[name])) for name in METRICS}
    out["per_item"] = {name: np.asarray(per_row[name], np.float64).tolist() for name in METRICS}
    for kind in shapes.KINDS:
        chosen = np.array([k == kind for k in kinds])
        if chosen.any():
            out[f"{kind}_obj_iou"] = float(np.mean(np.asarray(per_row["obj_iou"])[chosen]))
            out[f"{kind}_f3"] = float(np.mean(np.asarray(per_row["f3"])[chosen]))
    return out


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    jax.block_until_ready(out.image)
    return out, time.perf_counter() - started


def evaluate_baselines(model, batch, target, masks, kinds, *, deletion: bool) -> tuple[dict, dict]:
    """Every baseline's scores (and, when asked, deletion/insertion AUCs); also returns its maps."""
    table, maps = {}, {}
    for name, method, options in BASELINES:
        options = dict(options)
        if method == "integrated_gradients":
            options["baseline"] = model.params["text"]["embed"][model.pad_token_id]
        out, seconds = timed(attribute, model, batch, target, method=method, **options)
        maps[name] = np.asarray(out.image[0, :, 0])
        table[name] = {**scores(maps[name], masks, kinds), "seconds": seconds}
        if deletion:
            curves = deletion_insertion(model, batch, out.image[0], steps=16)
            for key in ("deletion_auc", "insertion_auc"):
                table[name][key] = float(np.mean(curves[key]))
                table[name]["per_item"][key] = np.asarray(curves[key], np.float64).tolist()
        print(f"  {name:28s} F3 {table[name]['f3']:.3f}  Obj-IoU {table[name]['obj_iou']:.3f}  "
              f"pointing {table[name]['pointing']:.3f}  ({seconds:.1f} s)", flush=True)
    return table, maps


def causal_model(rows, masks, kinds, folder) -> dict:
    model = load_small_vlm("llava")
    predicted = [t.strip() for t in model.generate(prompts(model, rows), max_new_tokens=ANSWER_LENGTH).texts]
    kept = [i for i, p in enumerate(predicted) if p]
    rows, masks, kinds = [rows[i] for i in kept], masks[kept], [kinds[i] for i in kept]
    predicted = [predicted[i] for i in kept]
    batch = encode(model, [q.text for _, q in rows], [e.image for e, _ in rows], answers=predicted)
    accuracy = float(np.mean([p == q.answer for (_, q), p in zip(rows, predicted)]))
    print(f"llava: {len(rows)} answered questions, accuracy {accuracy:.3f}")
    table, maps = evaluate_baselines(model, batch, None, masks, kinds, deletion=True)
    layers = attribute(model, batch, method="llava_cam", site="blocks.*.mlp.in")
    per_layer = {site: scores(np.asarray(layers.image[i, :, 0]), masks, kinds) for i, site in enumerate(layers.sites)}
    example = 0
    layer_grid(rows[example][0].image, layers.image[:, example, 0], list(layers.sites),
               title=f"LLaVA-CAM per layer: {rows[example][1].text} -> {predicted[example]}",
               path=f"{folder}/llava_cam_layers.png")
    plt.close("all")
    attribution_report(f"{folder}/report_llava_cam.html", layers, model, row=example, images=[rows[example][0].image],
                       notes={"question": rows[example][1].text, "answer": predicted[example]})
    _examples(rows, predicted, maps, folder, "llava")
    return {"questions": len(rows), "accuracy": accuracy, "methods": table, "llava_cam_per_layer": per_layer}


def _stack(batches):
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *batches)


def diffusion_model(rows, masks, kinds, folder) -> dict:
    model = load_small_vlm("diffusion")
    generated = sample(model, prompts(model, rows), gen_length=ANSWER_LENGTH, steps=ANSWER_LENGTH,
                       block_length=ANSWER_LENGTH)
    predicted = [t.strip() for t in generated.texts]
    kept = [i for i, p in enumerate(predicted) if p]
    print(f"diffusion: {len(kept)} answered questions, "
          f"accuracy {np.mean([predicted[i] == rows[i][1].answer for i in kept]):.3f}")
    final = _stack([dc.step_batch(model, generated, i, step="final") for i in kept])
    answers = generated.history[-1][kept]
    eos = set(model.config.eos_token_ids)
    # the baselines explain the answer's word tokens (not its <eos> padding), teacher-forced
    words = np.where(np.isin(answers, list(eos)), -1, final.tokens.shape[1] - ANSWER_LENGTH + np.arange(ANSWER_LENGTH))
    table, maps = evaluate_baselines(model, final, Tokens.at(words), masks[kept], [kinds[i] for i in kept],
                                     deletion=False)
    contrast = dc.contrast_target(model, final, answer_ids=answers)
    start = final.tokens.shape[1] - ANSWER_LENGTH
    decided = _stack([dc.step_batch(model, generated, i, answer_index=int(contrast.positions[r, 0]) - start)
                      for r, i in enumerate(kept)])
    target = Contrast.at(np.asarray(contrast.positions[:, 0]), np.asarray(contrast.positions[:, 1]),
                         np.asarray(contrast.ids))
    for name, modules in ABLATIONS:
        out, seconds = timed(attribute, model, decided, target, method="diffusion_cam", modules=modules,
                             step_ratio=1.0)
        maps[f"Diffusion-CAM {name}"] = np.asarray(out.image[0, :, 0])
        table[f"Diffusion-CAM {name}"] = {**scores(maps[f"Diffusion-CAM {name}"], masks[kept],
                                                   [kinds[i] for i in kept]), "seconds": seconds}
        print(f"  Diffusion-CAM {name:14s} F3 {table[f'Diffusion-CAM {name}']['f3']:.3f}", flush=True)
    out, seconds = timed(attribute, model, final, target, method="diffusion_cam", step_ratio=1.0)
    table["Diffusion-CAM all, finished answer"] = {**scores(np.asarray(out.image[0, :, 0]), masks[kept],
                                                            [kinds[i] for i in kept]), "seconds": seconds}
    _examples([rows[i] for i in kept], [predicted[i] for i in kept], maps, folder, "diffusion")
    return {"questions": len(kept), "accuracy": float(np.mean([predicted[i] == rows[i][1].answer for i in kept])),
            "methods": table}


def _examples(rows, predicted, maps, folder, kind, count: int = 4) -> None:
    """One figure per example question: every method's map over the image."""
    names = list(maps)
    for i in range(min(count, len(rows))):
        example, question = rows[i]
        fig = layer_grid(example.image, np.stack([maps[n][i] for n in names]), names, cols=5, shared_scale=False,
                         title=f"{kind}: {question.text} -> {predicted[i]} (truth {question.answer})")
        save_figure(fig, folder, f"examples_{kind}_{i}.png")


def _bars(results: dict, folder: str) -> None:
    for kind, result in results["models"].items():
        names = list(result["methods"])
        f3 = [result["methods"][n]["f3"] for n in names]
        fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.2))
        ax.barh(names[::-1], f3[::-1], color="tab:blue")
        ax.set_xlabel("F3 (harmonic mean of Obj-IoU, Contrast/20, Concentration)")
        ax.set_title(f"{kind}: localisation of the answer's objects ({result['questions']} questions)", fontsize=10)
        save_figure(fig, folder, f"f3_{kind}.png")


COLUMNS = [  # (key, header, higher is better)
    ("f3", "F3", True), ("obj_iou", "Obj-IoU", True), ("contrast", "Contrast", True),
    ("concentration", "Concentration", True), ("pointing", "pointing", True),
    ("deletion_auc", "deletion AUC", False), ("insertion_auc", "insertion AUC", True)]


def _sites(results: dict) -> str:
    sites = results["sites"]
    blur = ("not recorded" if "dacg_blur" not in sites else "none (the released code's no-op)"
            if sites["dacg_blur"] is None else f"sigma {sites['dacg_blur']}")
    return (f"Sites recorded in the results file: Grad-CAM, Grad-CAM++ and LLaVA-CAM `{sites['cam']}`, "
            f"Diffusion-CAM `{sites['diffusion_cam']}`; DACG blur {blur}.")


def _figure(scores: dict, key: str) -> str:
    """A method's metric: its mean with a bootstrap 95% interval over the questions where the
    results hold them per question, else the bare mean."""
    per_item = scores.get("per_item", {})
    return interval(bootstrap_mean(per_item[key])) if key in per_item else number(scores[key])


def _method_table(result: dict, names: list[str], label: str = "method") -> str:
    """One row per method of `names`: every metric of COLUMNS that the results hold for them."""
    methods = result["methods"]
    columns = [(key, header) for key, header, _ in COLUMNS if all(key in methods[n] for n in names)]
    return table([label, *(header for _, header in columns)],
                 [(name, *(_figure(methods[name], key) for key, _ in columns)) for name in names])


def _best(result: dict, names: list[str]) -> dict[str, str]:
    """Per metric of COLUMNS: the best and the runner-up method of `names` with their means, and
    the paired difference best - runner-up over the same questions with its bootstrap interval."""
    methods, found = result["methods"], {}
    for key, header, higher in COLUMNS:
        if all(key in methods[n] for n in names):
            first, second = sorted(names, key=lambda n: methods[n][key], reverse=higher)[:2]  # noqa: B023
            cell = f"{first} {number(methods[first][key])}; {second} {number(methods[second][key])}"
            if all(key in methods[n].get("per_item", {}) for n in (first, second)):
                gap = paired_difference(methods[second]["per_item"][key], methods[first]["per_item"][key])
                cell += f"; difference {interval(gap)}"
            found[f"{header} ({'higher' if higher else 'lower'} is better)"] = cell
    return found


def report(results: dict) -> str:
    """The measured section of docs/attribution.md on the trained small VLMs: every method's
    localisation scores (and, for the causal model, deletion/insertion AUCs) per model, the best two
    methods per metric, and the causal model's LLaVA-CAM per layer."""
    models = results["models"]
    baselines = [name for name, _, _ in BASELINES]
    lines = [f"{results['scenes']} held-out scenes; means over each model's answered questions, with bootstrap 95% "
             f"intervals over the questions where the results hold per-question scores. {_sites(results)}", ""]
    for kind, title, names in (
            ("llava", "Small LLaVA (causal)", baselines),
            ("diffusion", "Small diffusion MLLM", [*baselines, "Diffusion-CAM baseline", "Diffusion-CAM all"])):
        result = models[kind]
        lines += [f"{title}: {result['questions']} questions, answer accuracy {number(result['accuracy'])}.", "",
                  _method_table(result, names), ""]
    best = {kind: _best(models[kind], baselines) for kind in models}
    metrics = list(best["llava"])
    lines += [table([f"metric (the {len(baselines)} methods run on both models)", "small LLaVA: best; runner-up; paired difference",
                     "small diffusion MLLM: best; runner-up; paired difference"],
                    [(m, best["llava"][m], best["diffusion"].get(m, "not measured")) for m in metrics]), ""]
    per_layer = models["llava"]["llava_cam_per_layer"]
    lines.append(table(["small LLaVA, LLaVA-CAM at", *(header for key, header, _ in COLUMNS if key in METRICS)],
                       [(f"`{site}`", *(_figure(s, key) for key, _, _ in COLUMNS if key in METRICS))
                        for site, s in per_layer.items()]))
    return "\n".join(lines)


def report_ablation(results: dict) -> str:
    """The measured section of docs/diffusion_cam.md: Diffusion-CAM's ablation rows on the small
    diffusion MLLM (at the step that decided the target token, and all modules on the finished
    answer), with the gradient CAMs on the same questions for comparison."""
    result = results["models"]["diffusion"]
    rows = [f"Diffusion-CAM {name}" for name, _ in ABLATIONS] + ["Diffusion-CAM all, finished answer"]
    lines = [f"{result['questions']} held-out questions ({results['scenes']} scenes), answer accuracy "
             f"{number(result['accuracy'])}; site `{results['sites']['diffusion_cam']}`; means over the questions.", "",
             _method_table(result, rows, "row"), ""]
    methods, base = result["methods"], result["methods"]["Diffusion-CAM baseline"].get("per_item")
    if base is not None:
        lines += [table(["row", "F3 minus the baseline's (paired, same questions)"],
                        [(name, interval(paired_difference(base["f3"], methods[name]["per_item"]["f3"])))
                         for name in rows[1:]]), ""]
    return "\n".join([*lines,
        _method_table(result, ["Grad-CAM", "LLaVA-CAM", "LLaVA-CAM smooth (N=50)"], "for comparison, same questions")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=40, help="held-out scenes (4 questions each)")
    parser.add_argument("--out", default="results/attribution_vlm")
    args = parser.parse_args()
    folder = output_dir(args.out)
    started = time.perf_counter()
    rows = pairs(shapes.examples("heldout", args.scenes, seed=2))
    masks, kinds = object_masks(rows), [q.kind for _, q in rows]
    results = {"scenes": args.scenes, "sites": {"cam": CAM_SITE, "diffusion_cam": dc.DEFAULT_SITE.format(third=0),
                                            "dacg_blur": None},
               "models": {"llava": causal_model(rows, masks, kinds, folder),
                          "diffusion": diffusion_model(rows, masks, kinds, folder)}}
    results["seconds"] = time.perf_counter() - started
    save_json(folder, results)
    _bars(results, folder)
    print(f"done in {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
