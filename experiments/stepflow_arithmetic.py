"""StepFlow on vs off: SmolLM2 accuracy on arithmetic word problems.

    python -m experiments.stepflow_arithmetic [--problems 48] [--out results/stepflow_arithmetic]

The same problems and prompts as the Step-Saliency experiment, greedy, 96 new tokens, chat
template. StepFlow uses the spec's defaults (tau_max 0.15, alpha 0.06, OEB on the bottom
quarter of the 30 blocks, SMI on every block of the top quarter, whole-step mean) driven by
`TraceLabeler`: SmolLM2 has no thinking tag, so every generated token is thinking until the
marker " answer is", after which tokens are summary; a token ending in "." or a newline
closes a step of at least 4 tokens. Reports accuracy on / off, the flips each way, an exact
McNemar p-value, and how many tokens changed. Writes results.json and accuracy.png.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

import jaxinterp
from experiments import arithmetic_traces as traces
from experiments.outputs import output_dir, plt, save_figure, save_json
from jaxinterp.methods import stepflow as sf


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
    runs = {}
    for label, edits in (("off", ()), ("on", sf.stepflow(model.config.num_layers))):
        print(f"generating with StepFlow {label}")
        runs[label] = model.generate(prompts, args.new_tokens, chat=True, labeler=labeler, edits=edits)
    right = {k: np.array([traces.correct(p, t) for p, t in zip(items, run.texts)]) for k, run in runs.items()}
    fixed = int(np.sum(~right["off"] & right["on"]))
    broken = int(np.sum(right["off"] & ~right["on"]))
    mcnemar = stats.binomtest(fixed, fixed + broken).pvalue if fixed + broken else 1.0
    changed = [a != b for a, b in zip(runs["off"].tokens, runs["on"].tokens)]
    results = {
        "model": "smollm2", "problems": len(items), "settings": {"tau_max": 0.15, "alpha": 0.06, "window": None},
        "accuracy_off": float(right["off"].mean()), "accuracy_on": float(right["on"].mean()),
        "fixed": fixed, "broken": broken, "mcnemar_exact_p": float(mcnemar),
        "completions_changed": int(np.sum(changed)),
        "examples": [{"problem": p.story, "answer": p.answer, "off": a, "on": b}
                     for p, a, b, c in zip(items, runs["off"].texts, runs["on"].texts, changed) if c][:8],
    }
    save_json(folder, results)
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(["StepFlow off", "StepFlow on"], [results["accuracy_off"], results["accuracy_on"]], color=["grey", "tab:blue"])
    ax.set_ylabel("accuracy")
    ax.set_title(f"SmolLM2, {len(items)} arithmetic word problems", fontsize=9)
    save_figure(fig, folder, "accuracy.png")
    print(f"accuracy off {results['accuracy_off']:.3f} on {results['accuracy_on']:.3f}; fixed {fixed}, broken {broken}, "
          f"McNemar p {mcnemar:.3f}; {results['completions_changed']} completions changed")


if __name__ == "__main__":
    main()
