"""Perturbation attribution on SmolLM2: `feature_attribution` against Captum's `LLMAttribution`, one run.

    python -m benchmarks.perturbation [--permutations 4] [--exact]

A 6-shot arithmetic prompt (79 tokens) cut into 10 features (each worked example, then the
question's words), the log-probability of the answer " 19." as target, a baseline for removed
features (ours: the pad token in place; Captum: a placeholder word, re-tokenised). Both sides
score as many coalitions (Captum: `FeatureAblation` and
`ShapleyValueSampling` with its default cached decode; ours: one compiled sweep, each distinct
coalition once). Prints coalitions per second and the ratio; with `--exact`, also the error of
permutation Shapley against exact Shapley (1,024 coalitions) at the permutation counts each
side affords in the same wall time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import jaxinterp
from jaxinterp.attribution.feature_attribution import feature_attribution

SHOTS = ["12 + 7 = 19.", "5 + 30 = 35.", "8 + 8 = 16.", "41 + 2 = 43.", "9 + 14 = 23.", "6 + 27 = 33."]
QUESTION = ["What", "is", "15", "+ 4?"]


def prompt_and_features() -> tuple[str, list[str]]:
    text = "Solve each sum. " + " ".join(SHOTS) + " " + " ".join(QUESTION)
    return text, SHOTS + QUESTION


def captum_rate(reference, tokenizer, prompt: str, features: list[str], answer: str, method: str,
                permutations: int) -> tuple[float, int]:
    """(coalitions per second, coalitions) of Captum's LLMAttribution on the same features."""
    import torch
    from captum.attr import FeatureAblation, LLMAttribution, ShapleyValueSampling, TextTemplateInput

    template = "Solve each sum. " + " ".join("{}" for _ in features)
    inputs = TextTemplateInput(template, values=features, baselines=[tokenizer.unk_token or "_"] * len(features))
    algorithm = FeatureAblation if method == "ablation" else ShapleyValueSampling
    explainer = LLMAttribution(algorithm(reference), tokenizer)
    kwargs = {} if method == "ablation" else {"n_samples": permutations}
    coalitions = len(features) + 1 if method == "ablation" else permutations * len(features) + 1
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        explainer.attribute(inputs, target=answer, **kwargs)
    return coalitions / (time.perf_counter() - start), coalitions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--permutations", type=int, default=4)
    parser.add_argument("--exact", action="store_true", help="also compare errors against exact Shapley")
    args = parser.parse_args()
    from benchmarks.common import torch_reference

    model = jaxinterp.load("smollm2", progress=False)
    prompt, features = prompt_and_features()
    answer = " 19."
    print(f"prompt: {len(model.tokenizer(prompt)['input_ids'])} tokens, {len(features)} features, answer {answer!r}")
    reference = torch_reference("float32")
    rows = []
    for method in ("ablation", "shapley"):
        kwargs = dict(features=features, method=method, removal="baseline", progress=False)
        if method == "shapley":
            kwargs.update(samples=args.permutations)
        feature_attribution(model, prompt, answer, **kwargs)  # compile
        start = time.perf_counter()
        ours = feature_attribution(model, prompt, answer, **kwargs)
        ours_rate = ours.evaluations / (time.perf_counter() - start)
        theirs_rate, theirs_count = captum_rate(reference, model.tokenizer, prompt, features, answer.strip(), method,
                                                args.permutations)
        rows.append((method, ours.evaluations, ours_rate, theirs_count, theirs_rate))
    print(f"{'method':10s} {'ours: coalitions':>17s} {'per s':>7s} {'Captum: coalitions':>19s} {'per s':>7s} {'ratio':>6s}")
    for method, n_ours, r_ours, n_theirs, r_theirs in rows:
        print(f"{method:10s} {n_ours:17d} {r_ours:7.2f} {n_theirs:19d} {r_theirs:7.2f} {r_ours / r_theirs:5.2f}x")
    if args.exact:
        exact = feature_attribution(model, prompt, answer, features=features, method="exact", progress=False).values
        ratio = rows[1][2] / rows[1][4]
        for label, count in (("Captum's budget", args.permutations), ("ours, same time", int(args.permutations * ratio))):
            sampled = feature_attribution(model, prompt, answer, features=features, method="shapley",
                                          samples=max(count, 2), progress=False).values
            print(f"  {label:16s}: {max(count, 2):4d} permutations, mean |error| vs exact "
                  f"{np.abs(sampled - exact).mean():.4f}")


if __name__ == "__main__":
    main()
