"""ART on SmolLM2: is attention more uniform in shallow layers, and does replacing it help recall?

    python -m experiments.art_smollm2 [--questions 24] [--out results/art_smollm2]

Questions are seeded samples of BIG-bench tasks with unambiguous answers: capitals
(`qa_wikidata`, "The capital of X is" -> Y) and one-digit arithmetic (`arithmetic`, "What is 3
plus 4?" -> 7) answered by completion, and multiple-choice facts and dates (`arithmetic`'s and
`date_understanding`'s scored choices, `general_knowledge`) whose true and false completions are
scored. The headline score is the paper's: greedy cached generation (up to `--new-tokens`,
stopping at a newline) from the prompt "Q: <question>\\nA:" (capitals: the bare sentence), a hit
when the completion starts with the true answer (for choice tasks, the true choice). Secondary
columns teacher-force every completion after the prompt: exact match, answer log-prob and the
true-vs-false choice comparison. The completion's tokens are labelled `generated`, so ART (at
prefill) ranks and edits the prompt rows only, as the release does on its first step and as the
cached generation does; the teacher-forced figures are then exactly those of cached decoding.

1. Uniformity by layer: normalised entropy and the m-index (both the release's `drop` and the
   monotone `clamp` treatment of underflowing cells) of every head over the prompts, streamed
   layer by layer; Spearman's rho of the per-layer head medians against depth and the shallow
   (first five) vs deep (last five) medians answer "is attention more uniform in shallow layers?".
2. ART (prefill, repeat mode, most uniform heads replaced) at the code's defaults (layer 0, 10% of
   heads = 1 of 9) and variations, plus the release's ASCENDING = 1 default (`overwrite="local"`):
   accuracy and answer log-prob per task, the log-prob of true and false choices, paired deltas
   against the plain model (k = 0 heads: the plain model through the same compiled program).

Writes results.json, uniformity.png, entropy.png, m_index.png and art_effect.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats
from tqdm.auto import tqdm

import jaxinterp
from experiments.intervals import bootstrap_mean, paired_difference
from experiments.markdown import interval, number, p_value, signed, table
from experiments.outputs import output_dir, plt, save_figure, save_json
from jaxinterp.attention import layer_patterns, m_index, normalised_entropy
from jaxinterp.data.bigbench import load_task
from jaxinterp.methods.art import art
from jaxinterp.methods.truncation import answer_scores
from jaxinterp.models import make_batch, segment_id
from jaxinterp.viz import layer_head_heatmap, layer_profiles

QUESTION, GENERATED = segment_id("question"), segment_id("generated")
# label -> (layers, top-k ratio, overwrite); k = 0 runs the plain model through the same program
CONDITIONS = {
    "plain": ((0,), None, "uniform"),
    "ART L0 k=1 (code default)": ((0,), 0.1, "uniform"),
    "ART L0 k=3": ((0,), 0.34, "uniform"),
    "ART L0-3 k=1": ((0, 1, 2, 3), 0.1, "uniform"),
    "L0 k=1 local->uniform (code ASCENDING=1)": ((0,), 0.1, "local"),
}


@dataclasses.dataclass(frozen=True)
class Question:
    """A prompt with its true completion and, for multiple choice, the false ones."""

    task: str
    prompt: str
    answer: str
    false: tuple[str, ...] = ()


def questions(count: int, seed: int) -> list[Question]:
    """`count` seeded questions of each task (see the module docstring)."""
    rng = random.Random(seed)
    capitals = [e for e in load_task("qa_wikidata").examples
                if re.fullmatch(r"The capital of [^()]+ is", e.input) and len(e.target) == 1]
    found = [Question("capitals", e.input, " " + e.target[0]) for e in rng.sample(capitals, count)]
    sums = [e for name in ("arithmetic/1_digit_addition", "arithmetic/1_digit_multiplication")
            for e in load_task(name).examples]
    for kind, examples in (("arithmetic", sums), ("arithmetic (choice)", sums),
                           ("dates (choice)", load_task("date_understanding").examples),
                           ("facts (choice)", load_task("general_knowledge").examples)):
        for e in rng.sample(list(examples), count):
            scores = e.target_scores
            true = max(scores, key=scores.get)
            false = tuple(" " + c for c in scores if scores[c] == 0) if "choice" in kind else ()
            found.append(Question(kind, f"Q: {e.input}\nA:", " " + true, false))
    return found


def completions(items: list[Question]) -> list[tuple[int, str, str]]:
    """(question index, prompt, completion) for every completion to score, true ones first."""
    rows = [(i, q.prompt, q.answer) for i, q in enumerate(items)]
    return rows + [(i, q.prompt, c) for i, q in enumerate(items) for c in q.false]


def encode(model: jaxinterp.Model, rows: list[tuple[int, str, str]], widths=(16, 32, 96)) -> list[tuple[np.ndarray, object]]:
    """Rows as right-padded batches, one per width in `widths` (each row in the narrowest that fits,
    so short rows do not pay for long ones): [(row indices, batch)]; prompts `question`, completions `generated`."""
    tokenizer = model.tokenizer
    ids, segments = [], []
    for _, prompt, completion in rows:
        head, tail = tokenizer(prompt)["input_ids"], tokenizer(completion, add_special_tokens=False)["input_ids"]
        ids.append(head + tail)
        segments.append([QUESTION] * len(head) + [GENERATED] * len(tail))
    lengths = np.array([len(r) for r in ids])
    if lengths.max() > widths[-1]:
        raise ValueError(f"a row has {lengths.max()} tokens, more than the widest batch ({widths[-1]})")
    bucket = np.searchsorted(np.asarray(widths), lengths)
    batches = []
    for b, width in enumerate(widths):
        chosen = np.flatnonzero(bucket == b)
        if chosen.size:
            padded = lambda row, fill: row + [fill] * (width - len(row))  # noqa: E731
            batches.append((chosen, make_batch(
                np.array([padded(ids[i], model.pad_token_id) for i in chosen], np.int32),
                np.array([padded([True] * len(ids[i]), False) for i in chosen]),
                segments=np.array([padded(segments[i], segment_id("pad")) for i in chosen], np.int32))))
    return batches


@jax.jit
def _scores(model, batch, edits):
    """Answer log-prob and exact match, jitted whole so the [B, T, V] logits never leave the program."""
    return answer_scores(model.apply(batch, edits=edits).logits, batch)


def score(model: jaxinterp.Model, batches: list, edit, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Answer log-prob and exact match of every row, `chunk` rows per forward."""
    total = sum(len(chosen) for chosen, _ in batches)
    log_probs, hits = np.zeros(total, np.float32), np.zeros(total, bool)
    for chosen, batch in batches:
        rows = len(chosen)
        for start in tqdm(range(0, rows, chunk), desc="scoring", unit="batch", leave=False):
            index = np.minimum(np.arange(start, start + chunk), rows - 1)  # the last chunk repeats a row: one shape
            part = jax.tree.map(lambda x: x[index], batch)  # noqa: B023
            log_prob, hit = _scores(model, model.batch(part), model.check_edits(edit))
            log_probs[chosen[start:start + chunk]] = np.asarray(log_prob)[: rows - start]
            hits[chosen[start:start + chunk]] = np.asarray(hit)[: rows - start]
    return log_probs, hits


def generated_hits(model: jaxinterp.Model, items: list[Question], edit, new_tokens: int, chunk: int) -> np.ndarray:
    """Greedy cached generation from each prompt with `edit`: a hit when the completion, stripped,
    starts with the stripped true answer."""
    hits = []
    for start in tqdm(range(0, len(items), chunk), desc="generating", unit="batch", leave=False):
        part = items[start:start + chunk]
        texts = model.generate([q.prompt for q in part], new_tokens, edits=edit, stop="\n").texts
        hits += [text.strip().startswith(q.answer.strip()) for q, text in zip(part, texts)]
    return np.array(hits)


def uniformity(model: jaxinterp.Model, batch) -> dict[str, np.ndarray]:
    """[L, H] entropy and m-index (drop and clamp) over the prompts, one layer at a time."""
    found = {"entropy": [], "m_index": [], "m_index_clamp": []}
    for pattern in tqdm(layer_patterns(model, batch), total=model.config.num_layers, desc="layers", leave=False):
        found["entropy"].append(np.asarray(normalised_entropy(pattern.probs, pattern.visible)))
        for name, rule in (("m_index", "drop"), ("m_index_clamp", "clamp")):
            found[name].append(np.asarray(m_index(pattern.probs, pattern.visible, below_eps=rule)).mean(axis=0))
    return {name: np.stack(values) for name, values in found.items()}


def depth_summary(per_head: np.ndarray, shallow: int = 5) -> dict:
    """Per-layer head medians (robust to the m-index's heavy tail) against depth: Spearman's rho and
    p, and the shallow (first `shallow` layers) vs deep (last `shallow`) medians."""
    medians = np.median(per_head, axis=1)
    rho, p = stats.spearmanr(np.arange(len(medians)), medians)
    return {"spearman_rho_vs_depth": float(rho), "p": float(p), "shallow_median": float(np.median(medians[:shallow])),
            "deep_median": float(np.median(medians[-shallow:])), "per_layer_median": medians.tolist(),
            "per_layer_mean": per_head.mean(axis=1).tolist()}


def summarise(items: list[Question], rows, log_prob: np.ndarray, hit: np.ndarray, generated: np.ndarray) -> dict[str, dict]:
    """Per task: generated accuracy (with its bootstrap interval), teacher-forced accuracy and the mean
    true-answer log-prob; for choices the false log-probs too."""
    owner = np.array([r[0] for r in rows])
    true_lp, true_hit = log_prob[: len(items)], hit[: len(items)]
    result = {}
    for task in dict.fromkeys(q.task for q in items):
        chosen = [i for i, q in enumerate(items) if q.task == task]
        entry = {"n": len(chosen), "generated_accuracy": bootstrap_mean(generated[chosen]),
                 "answer_log_prob": float(true_lp[chosen].mean())}
        if items[chosen[0]].false:
            best_false = np.array([log_prob[len(items):][owner[len(items):] == i].max() for i in chosen])
            mean_false = np.array([log_prob[len(items):][owner[len(items):] == i].mean() for i in chosen])
            entry.update(teacher_forced_accuracy=float(np.mean(true_lp[chosen] > best_false)),
                         false_log_prob=float(mean_false.mean()),
                         true_minus_best_false=float(np.mean(true_lp[chosen] - best_false)))
        else:
            entry["teacher_forced_accuracy"] = float(true_hit[chosen].mean())
        result[task] = entry
    return result


def paired_delta(base: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Mean paired difference, its standard error and a Wilcoxon signed-rank p-value."""
    diff = other - base
    p = float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    return {"mean": float(diff.mean()), "stderr": float(diff.std(ddof=1) / np.sqrt(len(diff))), "wilcoxon_p": p}


def uniformity_table(results: dict) -> str:
    """Each uniformity measure's per-layer head median against depth: Spearman's rho and p, and the
    shallow (first five layers) vs deep (last five) medians (shared by `report` and `report_uniformity`)."""
    depth = [(name.replace("_", " "), signed(u["spearman_rho_vs_depth"]), p_value(u["p"]), number(u["shallow_median"]),
              number(u["deep_median"])) for name, u in results["uniformity"].items()]
    return table(["uniformity (per-layer head median)", "Spearman rho vs depth", "p", "first five layers",
                  "last five layers"], depth)


def report_uniformity(results: dict) -> str:
    """The SmolLM2 part of docs/attention_statistics.md's measured section: the uniformity table of
    `report`, then the range of each measure's per-layer head mean (the m-index's heavy tail)."""
    n = results["conditions"]["plain"]["generated_accuracy"]["n"]
    rows = []
    for name, u in results["uniformity"].items():
        means = np.asarray(u["per_layer_mean"])
        low, high = int(np.argmin(means)), int(np.argmax(means))
        rows.append((name.replace("_", " "), f"{number(means[low])} (layer {low})",
                     f"{number(means[high])} (layer {high})"))
    return "\n".join([f"{n} question prompts ({results['questions_per_task']} per task, seed {results['seed']}); "
                      f"{len(results['uniformity']['entropy']['per_layer_median'])} layers.", "",
                      uniformity_table(results), "",
                      table(["per-layer head mean", "lowest layer", "highest layer"], rows)])


def report(results: dict) -> str:
    """The measured section of docs/art.md: uniformity against depth, then every condition's generated
    accuracy (the paper's score) with its paired difference to the unedited model, the log-prob shift
    of all scored completions and the teacher-forced accuracy as secondary columns."""
    n = results["conditions"]["plain"]["generated_accuracy"]["n"]
    lines = [f"{results['questions_per_task']} questions per task, {n} in all; greedy answers of "
             f"{results['new_tokens']} new tokens (seed {results['seed']}).", ""]
    lines += [uniformity_table(results), ""]
    rows = []
    for label, c in results["conditions"].items():
        tasks = c["tasks"].values()
        forced = sum(t["teacher_forced_accuracy"] * t["n"] for t in tasks) / sum(t["n"] for t in tasks)
        delta = c.get("generated_accuracy_delta")
        shift = c.get("all_completions_log_prob_delta")
        rows.append((label, interval(c["generated_accuracy"]), "-" if delta is None else interval(delta),
                     "-" if shift is None else f"{signed(shift['mean'], 3)} +- {number(shift['stderr'], 2)} "
                                               f"(Wilcoxon p {p_value(shift['wilcoxon_p'])})",
                     number(forced)))
    lines.append(table(["condition", f"generated accuracy [95% CI] (n = {n})", "paired difference to plain",
                        "log-prob shift, all completions", "teacher-forced accuracy"], rows))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=24, help="questions per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=32, help="rows per forward")
    parser.add_argument("--new-tokens", type=int, default=8, help="greedy tokens generated per prompt")
    parser.add_argument("--out", default="results/art_smollm2")
    args = parser.parse_args()
    folder = output_dir(args.out)
    model = jaxinterp.load("smollm2", progress=False)
    items = questions(args.questions, args.seed)
    rows = completions(items)
    batches = encode(model, rows)
    prompts = encode(model, [(i, q.prompt, "") for i, q in enumerate(items)], widths=(64,))[0][1]

    print(f"uniformity by layer over {len(items)} prompts")
    found = uniformity(model, prompts)
    results = {"model": "smollm2", "questions_per_task": args.questions, "seed": args.seed, "new_tokens": args.new_tokens,
               "uniformity": {name: depth_summary(values) for name, values in found.items()},
               "per_head": {name: values.tolist() for name, values in found.items()}, "conditions": {}}

    scored = {}
    for label, (layers, ratio, overwrite) in CONDITIONS.items():
        edit = art(model, layers=layers, top_k_ratio=ratio or 0.1, overwrite=overwrite)
        edit = edit if ratio else edit.replace(heads=jnp.int32(0))  # plain: k = 0, same compiled program
        print(f"{label}: {int(edit.heads)} head(s) of layer(s) {list(layers)}")
        scored[label] = (*score(model, batches, edit, args.chunk), generated_hits(model, items, edit, args.new_tokens,
                                                                                     args.chunk))
        results["conditions"][label] = {"layers": list(layers), "heads": int(edit.heads), "overwrite": overwrite,
                                        "generated_accuracy": bootstrap_mean(scored[label][2]),
                                        "tasks": summarise(items, rows, *scored[label])}
    base, base_generated = scored["plain"][0], scored["plain"][2]
    for label, (log_prob, _, generated) in scored.items():
        if label != "plain":
            results["conditions"][label]["all_completions_log_prob_delta"] = paired_delta(base, log_prob)
            results["conditions"][label]["generated_accuracy_delta"] = paired_difference(base_generated, generated)
    save_json(folder, results)
    _figures(found, results, folder)


def _figures(found: dict[str, np.ndarray], results: dict, folder: str) -> None:
    fig = layer_profiles({name.replace("_", " "): values for name, values in found.items()},
                         title="SmolLM2 attention uniformity over the prompts", log=("m index", "m index clamp"))
    save_figure(fig, folder, "uniformity.png")
    for name in ("entropy", "m_index"):
        figure = layer_head_heatmap(found[name], title=f"SmolLM2 {name.replace('_', '-')} per head (prompts)",
                                    colorbar=name.replace("_", "-"))
        save_figure(figure, folder, f"{name}.png")
    conditions = results["conditions"]
    tasks = list(conditions["plain"]["tasks"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    width = 0.8 / (len(conditions) - 1)
    for j, label in enumerate(c for c in conditions if c != "plain"):
        for ax, key in zip(axes, ("teacher_forced_accuracy", "answer_log_prob")):
            deltas = [conditions[label]["tasks"][t][key] - conditions["plain"]["tasks"][t][key] for t in tasks]
            ax.bar(np.arange(len(tasks)) + j * width, deltas, width, label=label)
    for ax, key in zip(axes, ("teacher-forced accuracy", "true answer log-prob")):
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=20, fontsize=8)
        ax.set(ylabel=f"change in {key}", title=f"ART vs plain: {key}")
    axes[0].legend(fontsize=7)
    save_figure(fig, folder, "art_effect.png")


if __name__ == "__main__":
    main()
