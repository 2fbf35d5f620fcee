"""PBML few-shot classification of Python docstrings by module, on a truncated SmolLM2.

    python -m experiments.pbml_fewshot [--meta-steps 60] [--out results/pbml_fewshot]

Task: "which standard-library module does this docstring document?" Each of the 63 modules
of `jaxinterp.data.pydocs` is a class; classes are split by a seeded permutation into
35 meta-training, 8 validation and 20 test classes, so test episodes contain only modules
never seen in meta-training. Texts are the first 32 tokens of each docstring.

Encoder: the first `--layers` blocks of SmolLM2-135M-Instruct (pre-trained weights; fewer
blocks keep meta-training within the CPU budget) with the soft template
"<text> This documentation describes the module" appended; label words are the module
name's parts ("urllib request"). Meta-training follows PBML (`jaxinterp.methods.pbml`):
first-order inner loop on the label words, AdamW on the prompt and the encoder blocks
(embeddings frozen), best validation checkpoint kept.

Compared on the same seeded 5-way test episodes (mean query accuracy, 95% CI):
  zero-shot verbaliser  h . W0 with no adaptation (inner_steps = 0)
  prototypes            nearest support mean of h (cosine), pre-trained encoder
  PBML, no meta-train   inner loop only, pre-trained encoder and template
  PBML, meta-trained    the full method: the checkpoint best on validation classes, and the last one
Writes results.json and accuracy.png (test bars, validation curve).
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import jaxinterp
from experiments.markdown import interval, number, table
from experiments.outputs import output_dir, plt, save_figure, save_json
from jaxinterp.data.pydocs import stdlib_docstrings
from jaxinterp.methods import pbml

TEMPLATE = " This documentation describes the module"
SPLIT = (35, 8, 20)


def truncated(model, layers: int):
    """(config, params) of the first `layers` blocks of a library model (final norm kept)."""
    config = dataclasses.replace(model.config, num_layers=layers)
    params = {k: v for k, v in model.params.items() if not k.startswith("blocks_") or int(k.split("_")[1]) < layers}
    return config, params


def dataset(tokenizer, pad_id: int, max_tokens: int, seed: int):
    """Left-padded docstring tokens, module labels, label-word token ids and the class split."""
    docs = stdlib_docstrings()
    modules = sorted({d.module for d in docs})
    labels = np.array([modules.index(d.module) for d in docs], np.int32)
    ids = [tokenizer(d.text, add_special_tokens=False)["input_ids"][:max_tokens] for d in docs]
    tokens = np.full((len(ids), max_tokens), pad_id, np.int32)
    mask = np.zeros((len(ids), max_tokens), bool)
    for row, i in enumerate(ids):
        tokens[row, max_tokens - len(i):], mask[row, max_tokens - len(i):] = i, True
    words = [[tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in m.replace(".", "_").split("_") if w]
             for m in modules]
    order = np.random.default_rng(seed).permutation(len(modules))
    split = dict(zip(("train", "valid", "test"), np.split(order, np.cumsum(SPLIT)[:2])))
    return tokens, mask, labels, modules, words, split


def word_vectors(embedding: np.ndarray, words: list[list[list[int]]]) -> jnp.ndarray:
    """[C, D]: per class, the mean over its label words of the mean of each word's token embeddings."""
    return jnp.asarray(np.stack([np.mean([embedding[w].mean(0) for w in ws], 0) for ws in words]))


def confidence(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "ci95": float(1.96 * values.std(ddof=1) / math.sqrt(len(values))),
            "episodes": int(len(values))}


def degenerate(summary: dict, chance: float, queries: int) -> float | None:
    """For a test accuracy summary {"mean", "ci95" (half-width), "episodes"}: the ratio of its
    half-width to that of a classifier answering each of an episode's `queries` queries
    independently at the same accuracy, when chance lies inside its interval and that ratio is
    under one half (the spread of a near-constant predictor: answering one class scores exactly
    chance in every episode, since each class has as many queries); else None."""
    mean, half, episodes = summary["mean"], summary["ci95"], summary["episodes"]
    independent = 1.96 * math.sqrt(mean * (1 - mean) / queries / episodes)
    ratio = half / independent if independent > 0 else 0.0
    return ratio if abs(mean - chance) <= half and ratio < 0.5 else None


def report(results: dict) -> str:
    """The measured section of docs/pbml.md: test query accuracy of every method on the same seeded
    test episodes (95% normal interval over episodes), a degenerate row flagged from its spread (see
    `degenerate`), the best validation checkpoint and the validation curve of meta-training."""
    settings, config, chance = results["settings"], results["pbml"], results["chance"]
    queries = config["ways"] * config["queries"]
    history = results["history"]
    best = history["step"][int(np.argmax(history["valid_accuracy"]))]
    lines = [f"{config['ways']}-way {config['shots']}-shot, {config['queries']} query per class; "
             f"{len(results['classes']['test'])} unseen test modules; chance {number(chance)}. Encoder: the first "
             f"{settings['layers']} blocks; {settings['meta_steps']} meta-steps of batch {settings['meta_batch']}, "
             f"{config['inner_steps']} inner steps. The results hold no paired test between methods.", ""]
    rows, flagged = [], []
    for name, s in results["test_accuracy"].items():
        figure = {"mean": s["mean"], "ci95": [s["mean"] - s["ci95"], s["mean"] + s["ci95"]], "n": s["episodes"]}
        ratio = degenerate(s, chance, queries)
        if ratio is not None:
            flagged.append(name)
        rows.append((name, interval(figure), s["episodes"],
                     "-" if ratio is None else f"DEGENERATE: at chance, spread {number(ratio, 2)} of independent answers"))
    lines.append(table(["method", "test accuracy [95% CI over episodes]", "episodes", "flag"], rows))
    if flagged:
        lines += ["", f"Flagged ({', '.join(flagged)}): accuracy at chance with an interval under half as wide as "
                      f"independent answers at that accuracy would give over {queries} queries per episode; a "
                      f"near-constant predictor (answering one class scores exactly chance in every episode)."]
    lines += ["", f"Best validation checkpoint: meta-step {best} (validation accuracy "
                  f"{number(results['best_valid_accuracy'])}).", "",
              table(["meta-step", f"validation accuracy ({settings['valid_episodes']} episodes)", "mean train loss"],
                    [(step, number(acc), "-" if loss is None else number(loss)) for step, acc, loss in
                     zip(history["step"], history["valid_accuracy"], history["train_loss"])])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--meta-steps", type=int, default=60)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--meta-lr", type=float, default=5e-5)
    parser.add_argument("--inner-steps", type=int, default=50)
    parser.add_argument("--task-lr", type=float, default=5e-3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--valid-every", type=int, default=20)
    parser.add_argument("--valid-episodes", type=int, default=40)
    parser.add_argument("--test-episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/pbml_fewshot")
    args = parser.parse_args()
    folder = output_dir(args.out)

    model = jaxinterp.load("smollm2", progress=False)
    config = pbml.PBMLConfig(ways=5, shots=args.shots, queries=1, inner_steps=args.inner_steps, task_lr=args.task_lr)
    tokens, mask, labels, modules, words, split = dataset(model.tokenizer, model.pad_token_id, args.max_tokens, args.seed)
    model_config, params = truncated(model, args.layers)
    embedding = params.pop("embed")
    template = model.tokenizer(TEMPLATE, add_special_tokens=False)["input_ids"]
    meta_params = {"prompt": embedding[jnp.asarray(template)], "encoder": params}
    # frozen arrays travel as arguments of the jitted functions, never as closed-over constants
    data = {"embedding": embedding, "tokens": jnp.asarray(tokens), "mask": jnp.asarray(mask),
            "vectors": word_vectors(np.asarray(embedding), words)}
    table, counts = pbml.class_table(labels, len(modules))
    tables = {name: (table, jnp.where(jnp.isin(jnp.arange(len(modules)), classes), counts, 0)) for name, classes in split.items()}
    for _, split_counts in tables.values():
        pbml.check_classes(split_counts, config)

    def episodes(name, key, count):
        return jax.vmap(lambda k: pbml.sample_episode(k, *tables[name], config))(jax.random.split(key, count))

    def metrics(meta, data, batch, cfg=config, key=None):
        return pbml.episode_metrics(meta, model_config, data["embedding"], data["tokens"], data["mask"], data["vectors"],
                                    batch, cfg, key)

    evaluate = jax.jit(lambda meta, data, batch: metrics(meta, data, batch)[1])
    zero_shot = jax.jit(lambda meta, data, batch: metrics(meta, data, batch, dataclasses.replace(config, inner_steps=0))[1])

    @jax.jit
    def prototypes(meta, data, batch):
        index = jnp.concatenate([batch.support, batch.query], 2).reshape(-1)
        h = pbml.encode(model_config, meta["encoder"], data["embedding"], meta["prompt"], data["tokens"][index], data["mask"][index])
        h = h.reshape(*batch.support.shape[:2], -1, h.shape[-1])
        h = h / jnp.linalg.norm(h, axis=-1, keepdims=True)
        centres = h[:, :, :config.shots].mean(2)
        scores = jnp.einsum("bnqh,bch->bnqc", h[:, :, config.shots:], centres)
        return jnp.mean(jnp.argmax(scores, -1) == jnp.arange(config.ways)[None, :, None], axis=(1, 2))

    def accuracy(fn, meta, name, key, count, chunk=10):
        batch = episodes(name, key, count)
        parts = [fn(meta, data, jax.tree.map(lambda x: x[i:i + chunk], batch))
                 for i in tqdm(range(0, count, chunk), desc=f"{name} episodes", leave=False)]
        return np.concatenate([np.asarray(p) for p in parts])

    optimizer = pbml.meta_optimizer(args.meta_lr, args.meta_steps, max(1, args.meta_steps // 10), weight_decay=0.01)
    state = optimizer.init(meta_params)

    @jax.jit
    def meta_step(meta, state, data, key):
        episode_key, dropout_key = jax.random.split(key)
        batch = jax.vmap(lambda k: pbml.sample_episode(k, *tables["train"], config))(jax.random.split(episode_key, args.meta_batch))
        loss, grads = jax.value_and_grad(lambda m: metrics(m, data, batch, key=dropout_key)[0].mean())(meta)
        updates, state = optimizer.update(grads, state, meta)
        return optax.apply_updates(meta, updates), state, loss

    valid_key, test_key, train_key = jax.random.split(jax.random.key(args.seed), 3)
    initial = meta_params
    history = {"step": [], "valid_accuracy": [], "train_loss": []}
    best = (-1.0, meta_params)
    losses = []
    for step in tqdm(range(args.meta_steps + 1), desc="meta-training"):
        if step % args.valid_every == 0 or step == args.meta_steps:
            valid = float(accuracy(evaluate, meta_params, "valid", valid_key, args.valid_episodes).mean())
            history["step"].append(step)
            history["valid_accuracy"].append(valid)
            history["train_loss"].append(float(np.mean(losses)) if losses else None)
            losses = []
            if valid > best[0]:
                best = (valid, meta_params)
        if step < args.meta_steps:
            meta_params, state, loss = meta_step(meta_params, state, data, jax.random.fold_in(train_key, step))
            losses.append(float(loss))

    test = {
        "zero-shot verbaliser": accuracy(zero_shot, initial, "test", test_key, args.test_episodes),
        "prototypes (cosine)": accuracy(prototypes, initial, "test", test_key, args.test_episodes),
        "PBML, no meta-training": accuracy(evaluate, initial, "test", test_key, args.test_episodes),
        "PBML, meta-trained (best validation)": accuracy(evaluate, best[1], "test", test_key, args.test_episodes),
        "PBML, meta-trained (last step)": accuracy(evaluate, meta_params, "test", test_key, args.test_episodes),
    }
    results = {
        "settings": vars(args), "pbml": dataclasses.asdict(config), "modules": modules,
        "classes": {name: [modules[i] for i in classes] for name, classes in split.items()},
        "chance": 1 / config.ways, "best_valid_accuracy": best[0], "history": history,
        "test_accuracy": {name: confidence(values) for name, values in test.items()},
    }
    save_json(folder, results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(test)
    left.bar(range(len(names)), [test[n].mean() for n in names], yerr=[results["test_accuracy"][n]["ci95"] for n in names])
    left.axhline(1 / config.ways, color="gray", ls="--", label="chance")
    left.set_xticks(range(len(names)), names, rotation=20, ha="right")
    left.set(ylabel="query accuracy", title=f"{config.ways}-way {config.shots}-shot, {len(split['test'])} unseen modules")
    left.legend()
    right.plot(history["step"], history["valid_accuracy"], marker="o")
    right.set(xlabel="meta-step", ylabel="validation accuracy", title="meta-training")
    save_figure(fig, folder, "accuracy.png")
    for name, summary in results["test_accuracy"].items():
        print(f"{name}: {summary['mean']:.3f} +- {summary['ci95']:.3f}")


if __name__ == "__main__":
    main()
