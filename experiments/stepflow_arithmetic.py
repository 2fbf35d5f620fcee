"""StepFlow on vs off: SmolLM2 accuracy on arithmetic word problems.

    python -m experiments.stepflow_arithmetic [--problems 48] [--out results/stepflow_arithmetic]

The same problems and prompts as the Step-Saliency experiment, greedy, 96 new tokens, chat
template. StepFlow uses the spec's defaults (tau_max 0.15, alpha 0.06, OEB on the bottom
quarter of the 30 blocks) with each SMI variant: `reference` (the released code: the first block
of the top quarter, the previous step's last 4 tokens) and `all_deep_whole_step` (every block of
the top quarter, the whole previous step's mean), driven by
`TraceLabeler`: SmolLM2 has no thinking tag, so every generated token is thinking until the
marker " answer is", after which tokens are summary; a token ending in "." or a newline
closes a step of at least 4 tokens. Reports accuracy with bootstrap 95% intervals, and per
variant the paired difference against off, the flips each way, an exact McNemar p-value, and
how many completions changed. Writes results.json and accuracy.png.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

import jaxinterp
from experiments import arithmetic_traces as traces
from experiments.intervals import bootstrap_mean, paired_difference
from experiments.markdown import interval, number, p_value, signed, table
from experiments.outputs import output_dir, plt, save_figure, save_json
from jaxinterp.data.reasoning_gym import parse_answer
from jaxinterp.methods import stepflow as sf


def _saved(examples: list[dict]) -> str:
    """How many of the saved changed completions are scored correct with StepFlow off and on."""
    right = {side: sum(parse_answer(e[side]) == e["answer"] for e in examples) for side in ("off", "on")}
    return (f"Of the {len(examples)} changed completions saved in the file (the first ones in problem order), "
            f"{right['off']} are correct with StepFlow off and {right['on']} with it on.")


def report(results: dict) -> str:
    """The measured section of docs/stepflow.md: accuracy with StepFlow off and on, and per "on"
    configuration the paired comparison with off on the same problems (flips each way, exact
    McNemar p, completions changed). Reads either the current file (per-variant bootstrap intervals
    and paired differences) or one written before the SMI variants existed (`accuracy_off` /
    `accuracy_on`, a single "on" configuration, no interval)."""
    n = results["problems"]
    settings = results["settings"]
    if "variants" not in results:  # the file predates the SMI variants
        window = "the whole previous step" if settings.get("window") is None else f"{settings['window']} tokens"
        lines = [f"{n} problems. The file holds StepFlow off and one \"on\" configuration: tau_max "
                 f"{number(settings['tau_max'])}, alpha {number(settings['alpha'])}, SMI window {window}; it names no "
                 "SMI variant, records no SMI layers and holds no interval.", ""]
        difference = (results["fixed"] - results["broken"]) / n
        lines.append(table(["StepFlow", f"accuracy (n = {n})", "paired difference to off", "fixed / broken",
                            "exact McNemar p", "completions changed"],
                           [("off", f"{number(results['accuracy_off'])} ({round(results['accuracy_off'] * n)} / {n})",
                             "-", "-", "-", "-"),
                            ("on", f"{number(results['accuracy_on'])} ({round(results['accuracy_on'] * n)} / {n})",
                             signed(difference, 3), f"{results['fixed']} / {results['broken']}",
                             p_value(results["mcnemar_exact_p"]), f"{results['completions_changed']} / {n}")]))
        return "\n".join(lines + ["", _saved(results["examples"])])
    lines = [f"{n} problems; tau_max {number(settings['tau_max'])}, alpha {number(settings['alpha'])}.", ""]
    rows = [("off", "-", "-", interval(results["accuracy"]["off"]), "-", "-", "-", "-")]
    for variant, v in results["variants"].items():
        rows.append((variant, ", ".join(str(layer) for layer in v["smi_layers"]),
                     "whole previous step" if v["window"] is None else f"last {v['window']} tokens",
                     interval(results["accuracy"][variant]), interval(v["difference"]), f"{v['fixed']} / {v['broken']}",
                     p_value(v["mcnemar_exact_p"]), f"{v['completions_changed']} / {n}"))
    lines.append(table(["StepFlow", "SMI layers", "SMI average", f"accuracy [95% CI] (n = {n})",
                        "paired difference to off", "fixed / broken", "exact McNemar p", "completions changed"], rows))
    for variant, v in results["variants"].items():
        lines += ["", f"{variant}: " + _saved(v["examples"])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/stepflow_arithmetic")
    args = parser.parse_args()
    folder = output_dir(args.out)
    model = jaxinterp.load("smollm2", progress=False)
    tokenizer = model.tokenizer
    labeler = sf.TraceLabeler(boundary=sf.boundary_tokens(tokenizer, model.config.vocab_size),
                              summary_marker=sf.marker(tokenizer, " answer is"), thinking_marker=sf.marker(tokenizer, ""))
    items = traces.problems(args.problems, args.seed)
    prompts = [traces.prompt(p) for p in items]
    runs = {"off": model.generate(prompts, args.new_tokens, chat=True, labeler=labeler)}
    for variant in sf.SMI_VARIANTS:
        print(f"generating with StepFlow, SMI {variant}")
        runs[variant] = model.generate(prompts, args.new_tokens, chat=True, labeler=labeler,
                                       edits=sf.stepflow(model.config.num_layers, variant=variant))
    right = {k: np.array([traces.correct(p, t) for p, t in zip(items, run.texts)]) for k, run in runs.items()}
    results = {"model": "smollm2", "problems": len(items), "settings": {"tau_max": 0.15, "alpha": 0.06},
               "accuracy": {k: bootstrap_mean(v) for k, v in right.items()}, "variants": {}}
    for variant in sf.SMI_VARIANTS:
        fixed, broken = int(np.sum(~right["off"] & right[variant])), int(np.sum(right["off"] & ~right[variant]))
        changed = [a != b for a, b in zip(runs["off"].tokens, runs[variant].tokens)]
        layers, window = sf.smi_configuration(model.config.num_layers, variant)
        results["variants"][variant] = {
            "smi_layers": list(layers), "window": window, "difference": paired_difference(right["off"], right[variant]),
            "fixed": fixed, "broken": broken,
            "mcnemar_exact_p": float(stats.binomtest(fixed, fixed + broken).pvalue) if fixed + broken else 1.0,
            "completions_changed": int(np.sum(changed)),
            "examples": [{"problem": p.story, "answer": p.answer, "off": a, "on": b}
                         for p, a, b, c in zip(items, runs["off"].texts, runs[variant].texts, changed) if c][:4]}
    save_json(folder, results)
    fig, ax = plt.subplots(figsize=(5, 3))
    means = [results["accuracy"][k]["mean"] for k in runs]
    errors = np.array([[m - results["accuracy"][k]["ci95"][0], results["accuracy"][k]["ci95"][1] - m]
                       for m, k in zip(means, runs)]).T
    ax.bar(list(runs), means, yerr=errors, capsize=4, color=["grey", "tab:blue", "tab:orange"])
    ax.set_ylabel("accuracy (95% bootstrap interval)")
    ax.set_title(f"SmolLM2, {len(items)} arithmetic word problems", fontsize=9)
    save_figure(fig, folder, "accuracy.png")
    for variant, found in results["variants"].items():
        print(f"{variant}: accuracy {results['accuracy'][variant]['mean']:.3f} vs off {results['accuracy']['off']['mean']:.3f};"
              f" fixed {found['fixed']}, broken {found['broken']}, McNemar p {found['mcnemar_exact_p']:.3f}")


if __name__ == "__main__":
    main()
