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
this under 15 minutes on a CPU), averaged over problems; then CoSP-0, CoSP-1, SSV and NoE;
and the demonstration's accuracy on `--accuracy-problems` test problems. Reports the Pearson
r of each metric with accuracy across the pool. Every (demonstration, coalition, problem)
row is scored in one sweep. Writes results.json and cosp_vs_accuracy.png.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import jaxinterp
from experiments.markdown import number, signed, table
from experiments.outputs import output_dir, plt, save_figure, save_json
from jaxinterp.data.reasoning_gym import chain_problems
from jaxinterp.methods import salamander as sl

QUERY = "Q: {question}\nA: The answer is"


def demonstration(problem) -> str:
    return f"Q: {problem.story}\nA: {problem.worked()}\n\n"


def report(results: dict) -> str:
    """The CoSP paragraph of docs/salamander.md's measured section: each demonstration's accuracy,
    Shapley values and metrics, then the Pearson r of each metric with accuracy across the pool
    (undefined when the accuracy does not vary). No interval: the results hold per-demonstration
    figures on a few problems."""
    problems = results["accuracy_problems"]
    accuracy = results["accuracy"]
    lines = [f"{results['pool']} demonstrations ({min(results['expressions'])} to {max(results['expressions'])} "
             f"expressions), exact Shapley values on {results['shapley_problems']} test problems with v(S) = "
             f"{results['value']}; accuracy on {problems} problems; {number(results['seconds'])} s.", ""]
    rows = []
    for d in results["demonstrations"]:
        phibar = d["phibar"]
        largest = max(phibar)
        rows.append((d["n"], f"{number(d['accuracy'])} ({round(d['accuracy'] * problems)} / {problems})",
                     number(d["ssv"]), number(largest), number(min(phibar)),
                     number(largest / d["ssv"]) if d["ssv"] > 0 else "undefined",
                     *(number(d[key]) for key in ("cosp_0", "cosp_0.5", "cosp_1")), d["noe"],
                     d["coalitions_scored"]))
    lines.append(table(["expressions", "accuracy", "SSV", "largest phibar", "smallest phibar",
                        "largest phibar / SSV", "CoSP-0", "CoSP-0.5", "CoSP-1", "NoE", "coalitions"], rows))
    constant = len(set(accuracy)) == 1
    lines += ["", table(["metric", f"Pearson r with accuracy (n = {results['pool']} demonstrations)"],
                        [(name.replace("_", "-").replace("cosp", "CoSP").replace("ssv", "SSV").replace("noe", "NoE"),
                          signed(r))
                         for name, r in results["pearson_with_accuracy"].items()])]
    if constant:
        lines += ["", f"Every demonstration has the same accuracy ({number(accuracy[0])}, {round(accuracy[0] * problems)} / "
                      f"{problems}), so each correlation is "
                      "undefined."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-count", type=int, default=2)
    parser.add_argument("--max-expressions", type=int, default=4)
    parser.add_argument("--shapley-problems", type=int, default=4)
    parser.add_argument("--accuracy-problems", type=int, default=16)
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

    # accuracy of each demonstration: its full coalition on every accuracy problem, one sweep
    full = [sl.build_game(model.tokenizer, demonstration(d), tests, query=QUERY)[0] for d in demos]
    merged, offsets = sl.merge_games(full)
    rows = np.concatenate([offset + np.arange(len(tests)) for offset in offsets])
    values = sl.row_values(model, merged, rows, np.ones((len(rows), merged.n), bool), deletion="tokens",  # full prompts
                           progress=True)
    accuracy = (values.reshape(len(demos), len(tests)) > 0).mean(axis=1)

    metrics = [a.metrics((0.0, 0.5, 1.0)) for a in attributions]
    names = list(metrics[0])
    correlations = {name: sl.pearson([m[name] for m in metrics], accuracy) for name in names}
    results = {
        "model": "smollm2", "pool": len(demos), "expressions": [g.n for g in games],
        "shapley_problems": args.shapley_problems, "accuracy_problems": len(tests), "value": "probability x correct",
        "pearson_with_accuracy": correlations, "accuracy": accuracy, "mean_accuracy": float(accuracy.mean()),
        "demonstrations": [{"text": demonstration(d), "n": g.n, "accuracy": float(acc), "phibar": a.phibar,
                            "coalitions_scored": a.evaluations, **m}
                           for d, g, a, acc, m in zip(demos, games, attributions, accuracy, metrics)],
        "seconds": time.perf_counter() - started,
    }
    save_json(folder, results)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    for ax, name in zip(axes, ("cosp_0", "ssv", "noe")):
        ax.scatter([m[name] for m in metrics], accuracy)
        ax.set_xlabel(name)
        ax.set_title(f"r = {correlations[name]:.2f}", fontsize=9)
    axes[0].set_ylabel("accuracy")
    save_figure(fig, folder, "cosp_vs_accuracy.png")
    print(f"mean accuracy {accuracy.mean():.3f}; Pearson r with accuracy: "
          + ", ".join(f"{k} {v:.2f}" for k, v in correlations.items()))


if __name__ == "__main__":
    main()
