"""Perturbation attribution on SmolLM2: `feature_attribution` against Captum's `LLMAttribution`, one run.

    python -m benchmarks.perturbation [--permutations 4] [--exact]

A 6-shot arithmetic prompt (325 tokens: an unperturbed instruction, six worked word problems,
the question) cut into 10 features (each worked example, then the question's sentences), the
log-probability of the answer " 19." as target, a baseline for removed features (ours: the pad
token in place; Captum: a placeholder word, re-tokenised). Both sides score the same coalitions
(Captum: `FeatureAblation` and `ShapleyValueSampling` with its default cached decode; ours: each
distinct coalition once, in a prefix trie of KV caches: every distinct state of the leading
features runs once, as one compiled sweep a trie level). Prints coalitions per second, the ratio,
the share of token slots served from shared prefixes, and ours with a one-level trie (only the
instruction shared);
with `--exact`, also the error of permutation Shapley against exact Shapley (1,024 coalitions) at
the permutation counts each side affords in the same wall time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import jaxinterp
from jaxinterp.attribution.feature_attribution import feature_attribution
from benchmarks.common import write_results

INSTRUCTION = ("You are a careful assistant who solves short word problems about everyday sums. Read each "
               "worked example, notice how the two amounts are added, and then answer the last question in the "
               "same way, writing the sum and the result as a number followed by a full stop.")
SHOTS = [f"Example: {who} has {a} {what} and gets {b} more. How many {what} are there now? "
         f"Working: {a} + {b} = {a + b}. Answer: {a + b}."
         for who, a, b, what in [("Ann", 12, 7, "apples"), ("Ben", 5, 30, "marbles"), ("Cleo", 8, 8, "stamps"),
                                 ("Dev", 41, 2, "shells"), ("Eva", 9, 14, "pencils"), ("Finn", 6, 27, "cards")]]
QUESTION = ["Question: Gus has 15 coins and gets 4 more.", "How many coins are there now?",
            "Working: 15 + 4 =", "Answer:"]


def prompt_and_features() -> tuple[str, list[str]]:
    return INSTRUCTION + " " + " ".join(SHOTS + QUESTION), SHOTS + QUESTION


def captum_rate(reference, tokenizer, prompt: str, features: list[str], answer: str, method: str,
                permutations: int) -> tuple[float, int]:
    """(coalitions per second, coalitions) of Captum's LLMAttribution on the same features."""
    import torch
    from captum.attr import FeatureAblation, LLMAttribution, ShapleyValueSampling, TextTemplateInput

    template = INSTRUCTION + " " + " ".join("{}" for _ in features)
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
    parser.add_argument("--out", default="results/perturbation_smollm2/results.json")
    args = parser.parse_args()
    from benchmarks.common import torch_reference

    model = jaxinterp.load("smollm2", progress=False)
    prompt, features = prompt_and_features()
    answer = " 19."
    length = len(model.tokenizer(prompt)["input_ids"])
    print(f"prompt: {length} tokens, {len(features)} features, answer {answer!r}")
    results = {"model": "smollm2",
               "prompt_tokens": length, "features": len(features), "permutations": args.permutations, "methods": {}}
    reference = torch_reference("float32")
    rows = []
    for method in ("ablation", "shapley"):
        kwargs = dict(features=features, method=method, removal="baseline", progress=False)
        if method == "shapley":
            kwargs.update(samples=args.permutations)
        timed = {}
        for buckets in (1, 8):
            feature_attribution(model, prompt, answer, prefix_buckets=buckets, **kwargs)  # compile
            start = time.perf_counter()
            ours = feature_attribution(model, prompt, answer, prefix_buckets=buckets, **kwargs)
            timed[buckets] = (ours.evaluations / (time.perf_counter() - start), ours.prefix_share)
        theirs_rate, theirs_count = captum_rate(reference, model.tokenizer, prompt, features, answer.strip(), method,
                                                args.permutations)
        rows.append((method, ours.evaluations, timed, theirs_count, theirs_rate))
    print(f"{'method':10s} {'ours: coalitions':>17s} {'per s':>7s} {'cached':>7s} {'1 level':>9s} {'cached':>7s} "
          f"{'Captum: coalitions':>19s} {'per s':>7s} {'ratio':>6s}")
    for method, n_ours, timed, n_theirs, r_theirs in rows:
        (r_one, share_one), (r_ours, share) = timed[1], timed[8]
        print(f"{method:10s} {n_ours:17d} {r_ours:7.2f} {share:7.1%} {r_one:9.2f} {share_one:7.1%} "
              f"{n_theirs:19d} {r_theirs:7.2f} {r_ours / r_theirs:5.2f}x")
        results["methods"][method] = {
            "coalitions": n_ours, "per_s": r_ours, "cached_share": share, "one_bucket_per_s": r_one,
            "one_bucket_cached_share": share_one, "captum_coalitions": n_theirs, "captum_per_s": r_theirs,
            "ratio": r_ours / r_theirs}
    if args.exact:
        exact = feature_attribution(model, prompt, answer, features=features, method="exact", progress=False).values
        ratio = rows[1][2][8][0] / rows[1][4]
        for label, count in (("Captum's budget", args.permutations), ("ours, same time", int(args.permutations * ratio))):
            sampled = feature_attribution(model, prompt, answer, features=features, method="shapley",
                                          samples=max(count, 2), progress=False).values
            error = float(np.abs(sampled - exact).mean())
            print(f"  {label:16s}: {max(count, 2):4d} permutations, mean |error| vs exact {error:.4f}")
            results.setdefault("error_vs_exact", {})[label] = {"permutations": max(count, 2), "mean_abs_error": error}
    write_results(args.out, results)


if __name__ == "__main__":
    main()
