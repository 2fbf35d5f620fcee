"""SalaMAnder on SmolLM2: CoSP, SSV and NoE of 1-shot demonstrations vs accuracy on 2-step arithmetic.

    python -m experiments.salamander_cosp [--per-count 2] [--max-expressions 4] [--out results/salamander_cosp]

Pool: `per-count` worked demonstrations for each expression count 1..`max-expressions`
(reasoning-gym chain sums told as word problems, `a op b = c.` per step, from a training
seed). Test problems: 2-step chain sums (one-digit numbers) from another seed. Prompt:
`Q: <demo>\\nA: <worked answer>\\n\\nQ: <test>\\nA: The answer is` and the gold ` N`.

For each demonstration: exact Shapley values of its expressions (all 2^n coalitions, n <= 4)
on `--shapley-problems` test problems with v(S) = mean answer-token probability x
1[greedy emits the gold answer], teacher-forced (see `jaxinterp.methods.salamander`; the
model answers directly instead of generating its own chain of thought, which is what keeps
this under 15 minutes on a CPU; for v(S) teacher forcing is exact: the indicator holds iff greedy
decoding emits the gold tokens, and then the confidence is that of the generated tokens), averaged
over problems; then CoSP-0, CoSP-1, SSV and NoE.

A demonstration's accuracy, the paper's score, is that of generated answers: the model writes its
own worked answer after `Q: <test>\nA:` (greedy, at most `--answer-tokens` tokens, stopping at a
blank line or the next `Q:`) and is right when the first `answer is N` it writes has the gold N.
The teacher-forced accuracy (the direct answer's tokens are the argmax after `The answer is`) is
kept as a secondary column. Reports the Pearson r of each metric with both accuracies across the
pool, with a bootstrap 95% interval over the demonstrations. Every (demonstration, coalition,
problem) row is scored in one sweep. Writes results.json and cosp_vs_accuracy.png.
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
from tqdm.auto import tqdm

import jaxinterp
from experiments.intervals import bootstrap_correlation
from experiments.markdown import number, signed, table
from experiments.outputs import output_dir, plt, save_figure, save_json
from jaxinterp.data.reasoning_gym import chain_problems
from jaxinterp.methods import salamander as sl

QUERY = "Q: {question}\nA: The answer is"
OPEN_QUERY = "Q: {question}\nA:"
ANSWER = re.compile(r"answer is\s*(-?\d+)")


def demonstration(problem) -> str:
    return f"Q: {problem.story}\nA: {problem.worked()}\n\n"


def generated_correct(model, demos, tests: list[tuple[str, str]], *, answer_tokens: int, batch: int = 16) -> np.ndarray:
    """[demos, tests] bool: the greedy worked answer after `OPEN_QUERY` states the gold answer first."""
    prompts = [demonstration(d) + OPEN_QUERY.format(question=story) for d in demos for story, _ in tests]
    texts = []
    for start in tqdm(range(0, len(prompts), batch), desc="generating answers"):
        texts += model.generate(prompts[start:start + batch], answer_tokens, stop=["\n\n", "Q:"]).texts
    stated = [ANSWER.search(text) for text in texts]
    gold = [answer for _ in demos for _, answer in tests]
    return np.array([m is not None and m.group(1) == g for m, g in zip(stated, gold)]).reshape(len(demos), len(tests))


def _correlation(found: dict) -> str:
    """r [95% interval] (n), or why it is undefined."""
    if found["r"] is None:
        return f"undefined (accuracy or metric constant, n = {found['n']})"
    low, high = found["ci95"]
    return f"{signed(found['r'])} [{signed(low)}, {signed(high)}]"


def report(results: dict) -> str:
    """The CoSP paragraph of docs/salamander.md's measured section: each demonstration's accuracy
    on generated answers (and teacher-forced), Shapley values and metrics, then the Pearson r of
    each metric with each accuracy across the pool, with bootstrap 95% intervals over the
    demonstrations (undefined when the accuracy does not vary)."""
    problems = results["accuracy_problems"]
    lines = [f"{results['pool']} demonstrations ({min(results['expressions'])} to {max(results['expressions'])} "
             f"expressions), exact Shapley values on {results['shapley_problems']} test problems with v(S) = "
             f"{results['value']}; accuracy on {problems} problems; {number(results['seconds'])} s.", ""]
    rows = []
    for d in results["demonstrations"]:
        phibar = d["phibar"]
        largest = max(phibar)
        rows.append((d["n"], *(f"{number(d[key])} ({round(d[key] * problems)} / {problems})"
                               for key in ("accuracy", "accuracy_teacher_forced")),
                     number(d["ssv"]), number(largest), number(min(phibar)),
                     number(largest / d["ssv"]) if d["ssv"] > 0 else "undefined",
                     *(number(d[key]) for key in ("cosp_0", "cosp_0.5", "cosp_1")), d["noe"],
                     d["coalitions_scored"]))
    lines.append(table(["expressions", "accuracy, generated", "accuracy, teacher-forced", "SSV", "largest phibar",
                        "smallest phibar", "largest phibar / SSV", "CoSP-0", "CoSP-0.5", "CoSP-1", "NoE",
                        "coalitions"], rows))
    names = {"cosp": "CoSP", "ssv": "SSV", "noe": "NoE"}
    lines += ["", table(["metric", f"Pearson r with generated accuracy (n = {results['pool']} demonstrations)",
                         "Pearson r with teacher-forced accuracy"],
                        [(" ".join(names.get(w, w) for w in name.split("_")).replace(" ", "-"),
                          _correlation(results["pearson_with_accuracy"][name]),
                          _correlation(results["pearson_with_teacher_forced_accuracy"][name]))
                         for name in results["pearson_with_accuracy"]])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-count", type=int, default=2)
    parser.add_argument("--max-expressions", type=int, default=4)
    parser.add_argument("--shapley-problems", type=int, default=4)
    parser.add_argument("--accuracy-problems", type=int, default=16)
    parser.add_argument("--answer-tokens", type=int, default=48, help="tokens of a generated worked answer at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/salamander_cosp")
    args = parser.parse_args()
    folder = output_dir(args.out)
    started = time.perf_counter()
    model = jaxinterp.load("smollm2", progress=False)
    demos = [p for n in range(1, args.max_expressions + 1)
             for p in chain_problems(args.per_count, terms=(n + 1, n + 1), digits=(1, 1), seed=args.seed + 100 + n)]
    tests = [(p.story, str(p.answer)) for p in chain_problems(args.accuracy_problems, terms=(3, 3), digits=(1, 1),
                                                              seed=args.seed + 1)]
    games = [sl.build_game(model.tokenizer, demonstration(d), tests[:args.shapley_problems], query=QUERY)[0] for d in demos]
    assert [g.n for g in games] == [len(d.steps) for d in demos], "every worked step should be one player"
    attributions = sl.attribute(model, games, estimator="exact", progress=True)

    # teacher-forced accuracy of each demonstration: its full coalition on every accuracy problem, one sweep
    full = [sl.build_game(model.tokenizer, demonstration(d), tests, query=QUERY)[0] for d in demos]
    merged, offsets = sl.merge_games(full)
    rows = np.concatenate([offset + np.arange(len(tests)) for offset in offsets])
    values = sl.row_values(model, merged, rows, np.ones((len(rows), merged.n), bool), deletion="tokens",  # full prompts
                           progress=True)
    forced = (values.reshape(len(demos), len(tests)) > 0).mean(axis=1)
    accuracy = generated_correct(model, demos, tests, answer_tokens=args.answer_tokens).mean(axis=1)

    metrics = [a.metrics((0.0, 0.5, 1.0)) for a in attributions]
    names = list(metrics[0])
    results = {
        "model": "smollm2", "pool": len(demos), "expressions": [g.n for g in games],
        "shapley_problems": args.shapley_problems, "accuracy_problems": len(tests), "value": "probability x correct",
        "answer_tokens": args.answer_tokens,
        "pearson_with_accuracy": {name: bootstrap_correlation([m[name] for m in metrics], accuracy) for name in names},
        "pearson_with_teacher_forced_accuracy": {name: bootstrap_correlation([m[name] for m in metrics], forced)
                                                 for name in names},
        "accuracy": accuracy, "accuracy_teacher_forced": forced, "mean_accuracy": float(accuracy.mean()),
        "demonstrations": [{"text": demonstration(d), "n": g.n, "accuracy": float(acc),
                            "accuracy_teacher_forced": float(tf), "phibar": a.phibar,
                            "coalitions_scored": a.evaluations, **m}
                           for d, g, a, acc, tf, m in zip(demos, games, attributions, accuracy, forced, metrics)],
        "seconds": time.perf_counter() - started,
    }
    save_json(folder, results)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    for ax, name in zip(axes, ("cosp_0", "ssv", "noe")):
        ax.scatter([m[name] for m in metrics], accuracy)
        ax.set_xlabel(name)
        r = results["pearson_with_accuracy"][name]["r"]
        ax.set_title("r undefined" if r is None else f"r = {r:.2f}", fontsize=9)
    axes[0].set_ylabel("accuracy (generated answers)")
    save_figure(fig, folder, "cosp_vs_accuracy.png")
    print(f"mean accuracy {accuracy.mean():.3f} generated, {forced.mean():.3f} teacher-forced")


if __name__ == "__main__":
    main()
