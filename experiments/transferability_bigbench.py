"""Which SmolLM2 layer and pooling transfers best? Estimators vs trained linear probes on BIG-bench.

    python -m experiments.transferability_bigbench [--tasks sports_understanding ...] [--out DIR]

The candidate pool is the feature choice inside one model (the survey ranks models; one
model's layers and poolings are the pool we can afford on a CPU): SmolLM2-135M-Instruct's
residual stream after every `--layer-step`-th block, pooled over the text's tokens as the
first token, the mean, or the last token. For each BIG-bench multiple-choice task with a
fixed label set, a seeded stratified subsample (at most `--examples`) is split 60/40: every transferability
estimator scores each candidate from the 60% part alone; the ground truth is the held-out
accuracy of a logistic-regression probe (optax) trained on that same part. Agreement is the
rank correlation between estimator scores and probe accuracy across candidates (weighted
Kendall tau as in LogME/SFDA, plus Kendall tau, Spearman and Pearson).

LEEP and NCE need a source head; for an LM we use the logit lens (the model's final RMSNorm
and tied unembedding applied to the pooled feature) as theta over the vocabulary.
Writes results.json, correlations.png and probe_accuracy.png; `report(results)` renders the
measured section of docs/transferability.md from results.json (`python -m experiments.report`).
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import jaxinterp
from experiments.markdown import number, signed, table
from experiments.outputs import output_dir, plt, save_figure, save_json
from jaxinterp.data.bigbench import fetch, load_task
from jaxinterp.methods import transferability as tr
from jaxinterp.methods.features import POOLINGS, pooled_features

TASKS = ("sports_understanding", "intent_recognition", "implicatures", "metaphor_boolean")
CORRELATIONS = {"weighted_tau": tr.weighted_tau, "kendall_tau": tr.kendall_tau, "spearman": tr.spearman,
                "pearson": tr.pearson}
LABELS = {"h_score": "H-Score", "shrinkage_h_score": "shrinkage H-Score", "logme": "LogME", "transrate": "TransRate",
          "sfda": "SFDA", "parc": "PARC", "knn": "kNN", "linear_probe": "linear probe (own holdout of the training split)",
          "nleep": "NLEEP", "gbc": "GBC", "pactran_gaussian": "PACTran-Gaussian", "leep": "LEEP (logit lens)",
          "nce": "NCE (logit lens)"}


def stratified_split(labels: np.ndarray, examples: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded subsample of about `examples` items, split per class into train / test."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = max(2, examples // len(classes))
    train, test = [], []
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))[:per_class]
        cut = max(1, int(round(train_fraction * len(members))))
        train.extend(members[:cut])
        test.extend(members[cut:])
    return np.array(sorted(train)), np.array(sorted(test))


def logit_lens(model, features: np.ndarray) -> jnp.ndarray:
    """Next-token distribution [N, V] read from pooled residual features via the final norm and unembedding."""
    x = jnp.asarray(features)
    x = x * jax.lax.rsqrt(jnp.mean(x**2, -1, keepdims=True) + model.config.rms_norm_eps) * model.params["final_norm"]["scale"]
    return jax.nn.softmax(x @ model.params["embed"].T, axis=-1)


@functools.partial(jax.jit, static_argnames="num_classes")
def probe_accuracies(train: jnp.ndarray, train_labels: jnp.ndarray, test: jnp.ndarray, test_labels: jnp.ndarray,
                     num_classes: int) -> jnp.ndarray:
    """Held-out accuracy [M] of a probe trained on each candidate [M, N, D] (the ground truth)."""
    return jax.vmap(lambda a, b: tr.probe_accuracy(tr.train_linear_probe(a, train_labels, num_classes=num_classes), b, test_labels))(train, test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--examples", type=int, default=600, help="subsample size per task (before the split)")
    parser.add_argument("--layer-step", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/transferability_bigbench")
    args = parser.parse_args()
    folder = output_dir(args.out)
    started_run = time.perf_counter()

    model = jaxinterp.load("smollm2", progress=False)
    layers = list(range(args.layer_step - 1, model.config.num_layers, args.layer_step))
    sites = [f"blocks.{i}.resid_post" for i in layers]
    candidates = [(site, pooling) for site in sites for pooling in POOLINGS]
    fetch(args.tasks)
    results = {"settings": vars(args), "candidates": [f"{s}/{p}" for s, p in candidates], "tasks": {}}
    key = jax.random.key(args.seed)
    for name in args.tasks:
        texts, labels, classes = load_task(name).classification()
        train, test = stratified_split(labels, args.examples, 0.6, args.seed)
        chosen = np.concatenate([train, test])
        features = pooled_features(model, [texts[i] for i in chosen], sites=sites, max_tokens=args.max_tokens)
        stack = np.stack([features[c] for c in candidates])  # [M, N, D]
        results["feature_dims"] = stack.shape[-1]
        # A candidate whose feature is the same for every text (e.g. the first token when every
        # input starts with the same word) has no defined score; it is reported and left out.
        constant = [bool(np.allclose(f, f[0])) for f in stack]
        kept = [i for i, c in enumerate(constant) if not c]
        stack_train, stack_test = stack[kept, : len(train)], stack[kept, len(train):]
        y_train, y_test = labels[train], labels[test]
        truth = np.asarray(probe_accuracies(jnp.asarray(stack_train), jnp.asarray(y_train), jnp.asarray(stack_test),
                                            jnp.asarray(y_test), num_classes=len(classes)))
        task = {"classes": list(classes), "train": len(train), "test": len(test),
                "constant_candidates": [results["candidates"][i] for i, c in enumerate(constant) if c],
                "kept_candidates": [results["candidates"][i] for i in kept], "probe_accuracy": truth,
                "scores": {}, "seconds": {}, "correlations": {}}
        for estimator_name, estimator in tqdm(tr.ESTIMATORS.items(), desc=f"{name}: estimators"):
            started = time.perf_counter()
            if estimator_name in ("leep", "nce"):
                with jax.enable_x64(True):
                    scores = np.array([float(estimator(jnp.asarray(logit_lens(model, f), jnp.float64), jnp.asarray(y_train),
                                                       num_classes=len(classes))) for f in stack_train])
            else:
                extra = {"key": key} if estimator_name in ("nleep", "linear_probe") else {}
                scores = tr.score_candidates(estimator, stack_train, y_train, num_classes=len(classes), **extra)
            task["seconds"][estimator_name] = time.perf_counter() - started
            task["scores"][estimator_name] = scores
            task["correlations"][estimator_name] = {
                metric: float(fn(scores, truth)) if np.all(np.isfinite(scores)) and np.ptp(scores) > 0 else float("nan")
                for metric, fn in CORRELATIONS.items()
            }
        best = int(np.argmax(truth))
        task["best_candidate"] = task["kept_candidates"][best]
        task["top1_by_estimator"] = {n: task["kept_candidates"][int(np.argmax(s))] for n, s in task["scores"].items()}
        results["tasks"][name] = task
        print(f"{name}: best probe {truth[best]:.3f} at {task['best_candidate']}; weighted tau: "
              + ", ".join(f"{n} {c['weighted_tau']:+.2f}" for n, c in task["correlations"].items()))
    estimators = list(tr.ESTIMATORS)
    results["mean_weighted_tau"] = {}  # over the tasks where the correlation is defined (scores not all equal)
    for n in estimators:
        taus = [results["tasks"][t]["correlations"][n]["weighted_tau"] for t in args.tasks]
        results["mean_weighted_tau"][n] = float(np.mean([x for x in taus if np.isfinite(x)])) if any(np.isfinite(taus)) else None
    results["seconds"] = time.perf_counter() - started_run  # model load, features, probes and estimators
    save_json(folder, results)

    matrix = np.array([[results["tasks"][t]["correlations"][n]["weighted_tau"] for t in args.tasks] for n in estimators])
    fig, ax = plt.subplots(figsize=(1.6 * len(args.tasks) + 3, 5))
    image = ax.imshow(matrix, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(args.tasks)), args.tasks, rotation=20, ha="right")
    ax.set_yticks(range(len(estimators)), estimators)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:+.2f}", ha="center", va="center", fontsize=8)
    ax.set_title("weighted Kendall tau: estimator score vs probe accuracy\n(SmolLM2 layers x poolings)")
    fig.colorbar(image, ax=ax)
    save_figure(fig, folder, "correlations.png")
    fig, axes = plt.subplots(1, len(args.tasks), figsize=(4 * len(args.tasks), 3.2), squeeze=False)
    for ax, name in zip(axes[0], args.tasks):
        task = results["tasks"][name]
        accuracy = dict(zip(task["kept_candidates"], task["probe_accuracy"]))
        for pooling in POOLINGS:
            points = [(i, accuracy[f"{site}/{pooling}"]) for i, site in zip(layers, sites) if f"{site}/{pooling}" in accuracy]
            if points:
                ax.plot(*zip(*points), marker=".", label=pooling)
        ax.set(title=name, xlabel="block", ylabel="probe accuracy (held out)")
        ax.legend()
    save_figure(fig, folder, "probe_accuracy.png")


def report(results: dict) -> str:
    """The measured section of docs/transferability.md: the run's setting, the weighted Kendall tau of
    every estimator in the results file per task with its mean and summed estimator time, the best
    probe, the candidates left out as constant, and the undefined correlations with the constant
    scores behind them."""
    settings, tasks = results["settings"], list(results["tasks"])
    names = [n for n in results["mean_weighted_tau"]]
    sites = list(dict.fromkeys(c.split("/")[0] for c in results["candidates"]))
    poolings = list(dict.fromkeys(c.split("/")[1] for c in results["candidates"]))
    width = f", {results['feature_dims']} feature dimensions" if "feature_dims" in results else ""
    runtime = (f"{number(results['seconds'])} s in all" if "seconds" in results
               else "the run's total time is not in this results file")
    lines = [f"{len(results['candidates'])} candidates ({len(sites)} residual-stream sites, every "
             f"{settings['layer_step']} blocks from block {sites[0].split('.')[1]}, x {' / '.join(poolings)} pooling"
             f"{width}); per task a stratified sample of at most {settings['examples']} examples (seed "
             f"{settings['seed']}, at most {settings['max_tokens']} tokens each); {runtime}.", ""]
    header = ["estimator"] + [f"{t} ({len(results['tasks'][t]['classes'])} classes; {results['tasks'][t]['train']} train / "
                              f"{results['tasks'][t]['test']} test)" for t in tasks]
    header += ["mean", "estimator seconds, all tasks"]
    rows = []
    for n in names:
        taus = [results["tasks"][t]["correlations"][n]["weighted_tau"] for t in tasks]
        defined = sum(np.isfinite(taus))
        mean = signed(results["mean_weighted_tau"][n]) + (f" ({defined} tasks)" if 0 < defined < len(tasks) else "")
        seconds = sum(results["tasks"][t]["seconds"][n] for t in tasks)
        rows.append([LABELS.get(n, n), *(signed(x) for x in taus), mean, number(seconds)])
    lines += ["Weighted Kendall tau between estimator scores and held-out probe accuracy across the kept candidates "
              "(estimator seconds include compilation):", "", table(header, rows), ""]
    best = [f"{t} {number(max(r['probe_accuracy']))} ({r['best_candidate']})" for t, r in results["tasks"].items()]
    lines += ["Best probe accuracy (held out): " + "; ".join(best) + ".", ""]
    dropped = [f"{t}: {len(r['constant_candidates'])} ({' / '.join(sorted({c.split('/')[1] for c in r['constant_candidates']}))} "
               "pooling)" for t, r in results["tasks"].items() if r["constant_candidates"]]
    lines += ["Candidates left out as constant across texts: " + ("; ".join(dropped) if dropped else "none") + ".", ""]
    constant = []
    for n in names:
        for t in tasks:
            if not np.isfinite(results["tasks"][t]["correlations"][n]["weighted_tau"]):
                scores = results["tasks"][t]["scores"][n]
                low, high = f"{min(scores):.6g}", f"{max(scores):.6g}"
                constant.append(f"{LABELS.get(n, n)} on {t}: {low if low == high else f'{low} to {high}'}")
    if constant:
        lines += ["Undefined correlations, every kept candidate scoring the same (to 6 digits): " + "; ".join(constant)
                  + ".", ""]
    missing = [LABELS[n] for n in tr.ESTIMATORS if n not in results["mean_weighted_tau"]]
    if missing:
        lines.append("Estimators of `ESTIMATORS` not in this results file: " + ", ".join(missing) + ".")
    return "\n".join(lines).strip()


if __name__ == "__main__":
    main()
