"""A small sparse autoencoder on SmolLM2's residual stream, trained here with optax.

    python -m experiments.sae_smollm2 [--out results/sae_smollm2]

Activations of `blocks.{layer}.resid_pre` over an offline corpus (the standard library's
docstrings, `jaxinterp.data.pydocs`, cut into `context`-token chunks, a seeded split into
training and held-out chunks). The first position of every chunk is dropped: its residual
norm is far above the others' (the attention sink) and would dominate the squared error.

The SAE is the standard (ReLU) one, trained on activations scaled by one constant c so that
E||c x||^2 = d_in, with Anthropic's April 2024 loss

    L = mean over tokens of ||x - x^||^2 + l1 * sum_i f_i ||W_dec_i||

(the penalty weighs each feature by its decoder norm, so shrinking the decoder cannot buy
sparsity), Adam with warm-up and cosine decay. c is folded into the weights afterwards, so the
saved SAE reads raw activations. It is trained once and cached in the SAELens format
(`jaxinterp.sae.save_sae`) under `cache_root()/sae_smollm2/<hash of Settings>`, and every use
loads it back with `jaxinterp.sae.load_sae`. `main` reports on held-out chunks the mean squared
error, the fraction of variance unexplained, L0 (active features per token), dead features and
the next-token cross-entropy of the model clean and with the reconstruction written in place
of the activations (every position but the dropped first), and writes results.json and
training.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import jaxinterp
from experiments.outputs import output_dir, plt, save_figure, save_json
from jaxinterp.cache import cache_root
from jaxinterp.data.pydocs import stdlib_docstrings
from jaxinterp.errors import ArgumentError
from jaxinterp.sae import SAE, load_sae, save_sae


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything that determines a trained SAE; its hash names the cache entry.

    Attributes:
      layer: the block whose `resid_pre` the SAE reads.
      expansion: d_sae / d_in.
      l1: weight of the decoder-norm-weighted L1 penalty (on activations scaled to E||x||^2 = d_in).
      context: tokens per chunk (the first is dropped).
      train_chunks, heldout_chunks: chunks of the corpus for training and for the report.
      steps, batch_size, learning_rate: Adam with 5% warm-up and cosine decay to a tenth.
      seed: the split, the initialisation and the batch order.
    """

    layer: int = 10
    expansion: int = 4
    l1: float = 5.0
    context: int = 64
    train_chunks: int = 192
    heldout_chunks: int = 16
    steps: int = 1500
    batch_size: int = 512
    learning_rate: float = 1e-3
    seed: int = 0

    @property
    def site(self) -> str:
        return f"blocks.{self.layer}.resid_pre"

    def digest(self) -> str:
        """A short hash of the settings and the Python version (the corpus is its docstrings)."""
        text = json.dumps([dataclasses.asdict(self), sys.version_info[:2]], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def chunks(tokenizer, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """(train [train_chunks, context], heldout [heldout_chunks, context]) token ids of the corpus."""
    text = "\n\n".join(doc.text for doc in stdlib_docstrings())
    ids = np.asarray(tokenizer(text)["input_ids"], np.int32)
    count = len(ids) // settings.context
    wanted = settings.train_chunks + settings.heldout_chunks
    if count < wanted:
        raise ArgumentError(f"train_chunks + heldout_chunks: expected at most {count} chunks of {settings.context} "
                            f"tokens, found {wanted}")
    rows = ids[:count * settings.context].reshape(count, settings.context)
    chosen = rows[np.random.default_rng(settings.seed).permutation(count)[:wanted]]
    return chosen[:settings.train_chunks], chosen[settings.train_chunks:]


def activations(model: jaxinterp.Model, rows: np.ndarray, site: str, *, batch: int = 16) -> np.ndarray:
    """[rows x (context - 1), d_in] float32 activations of `site`, the first position of each row dropped."""
    found = [np.asarray(model.run(rows[i:i + batch], capture=[site])[site][:, 1:], np.float32)
             for i in range(0, len(rows), batch)]
    return np.concatenate(found).reshape(-1, found[0].shape[-1])


def sae_loss(sae: SAE, x: jax.Array, l1: float) -> tuple[jax.Array, dict]:
    """Squared error plus the decoder-norm-weighted L1 penalty, per token on average (see the module docstring)."""
    features = sae.encode(x)
    squared = jnp.sum((sae.decode(features) - x) ** 2, axis=-1)
    sparsity = features @ jnp.linalg.norm(sae.W_dec, axis=-1)
    return jnp.mean(squared + l1 * sparsity), {"mse": jnp.mean(squared) / x.shape[-1],
                                               "l0": jnp.mean(jnp.sum(features > 0, axis=-1))}


def initial_sae(x: np.ndarray, d_sae: int, site: str, key: jax.Array) -> SAE:
    """Decoder rows in random directions of norm 0.1, the encoder their transpose, b_dec the data mean."""
    directions = jax.random.normal(key, (d_sae, x.shape[1]))
    W_dec = 0.1 * directions / jnp.linalg.norm(directions, axis=1, keepdims=True)
    return SAE(W_enc=W_dec.T, b_enc=jnp.zeros(d_sae), W_dec=W_dec, b_dec=jnp.asarray(x.mean(0)), site=site)


def train_sae(x: np.ndarray, settings: Settings, *, progress: bool = True) -> tuple[SAE, dict[str, list[float]]]:
    """An SAE of `settings.site` trained on activations x [N, d_in]; returns it (reading raw
    activations) and its training curves (loss, mse and l0 per step, on the scaled activations)."""
    if len(x) < settings.batch_size:
        raise ArgumentError(f"x: expected at least batch_size={settings.batch_size} activations, found {len(x)}")
    scale = float(np.sqrt(x.shape[1] / np.mean(np.sum(x.astype(np.float64) ** 2, axis=1))))
    x = (x * scale).astype(np.float32)
    key = jax.random.key(settings.seed)
    sae = initial_sae(x, settings.expansion * x.shape[1], settings.site, key)
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, max(1, settings.steps // 20),
                                                  settings.steps, settings.learning_rate / 10)
    optimizer = optax.adam(schedule)

    @jax.jit
    def step(sae, state, batch):
        (loss, metrics), grads = jax.value_and_grad(sae_loss, has_aux=True)(sae, batch, settings.l1)
        updates, state = optimizer.update(grads, state, sae)
        return optax.apply_updates(sae, updates), state, {"loss": loss, **metrics}

    rng, state, order = np.random.default_rng(settings.seed), optimizer.init(sae), np.zeros(0, int)
    curves: dict[str, list[float]] = {"loss": [], "mse": [], "l0": []}
    for _ in tqdm(range(settings.steps), desc="sae_smollm2", disable=not progress):
        if len(order) < settings.batch_size:
            order = rng.permutation(len(x))
        chosen, order = order[:settings.batch_size], order[settings.batch_size:]
        sae, state, metrics = step(sae, state, x[chosen])
        for name in curves:
            curves[name].append(float(metrics[name]))
    return unscaled(sae, scale), curves


def unscaled(sae: SAE, scale: float) -> SAE:
    """The SAE that reads raw x as `sae` reads scale * x: the same features, the reconstruction / scale.

    pre = (c x - b) W + e = (x - b / c) (c W) + e, and x^ / c = f (W_dec / c) + b / c.
    """
    return sae.replace(W_enc=sae.W_enc * scale, W_dec=sae.W_dec / scale, b_dec=sae.b_dec / scale)


def cache_entry(settings: Settings) -> str:
    """The cache directory of a trained SAE: SAELens files plus `training.json`."""
    return os.path.join(cache_root(), "sae_smollm2", settings.digest())


def load_or_train(model: jaxinterp.Model, settings: Settings, *, progress: bool = True) -> tuple[SAE, dict]:
    """The cached SAE of `settings` and its training record, trained first if not cached."""
    entry = cache_entry(settings)
    if not os.path.isfile(os.path.join(entry, "training.json")):
        started = time.perf_counter()
        x = activations(model, chunks(model.tokenizer, settings)[0], settings.site)
        collected = time.perf_counter()
        sae, curves = train_sae(x, settings, progress=progress)
        record = {"settings": dataclasses.asdict(settings), "activations": len(x),
                  "collect_seconds": collected - started, "train_seconds": time.perf_counter() - collected,
                  "curves": curves}
        partial = f"{entry}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        save_sae(sae, partial, f"blocks.{settings.layer}.hook_resid_pre")
        with open(os.path.join(partial, "training.json"), "w") as f:
            json.dump(record, f)
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(partial, entry)
    with open(os.path.join(entry, "training.json")) as f:
        return load_sae(entry), json.load(f)


def next_token_loss(model: jaxinterp.Model, rows: np.ndarray, edits=()) -> float:
    """Mean next-token cross-entropy over `rows` (targets from the second position on)."""
    logits = model.run(rows, edits=edits).logits[:, 1:-1]
    return float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(rows[:, 2:]))))


def report(model: jaxinterp.Model, sae: SAE, heldout: np.ndarray) -> dict[str, float]:
    """Reconstruction, sparsity and spliced-in loss of `sae` on held-out chunks.

    The reconstruction is written at every position but the first (the one left out of
    training), which is `SpliceSAE(keep_error=False)` restricted to those positions.
    """
    captured = model.run(heldout, capture=[sae.site])[sae.site]
    x = np.asarray(captured[:, 1:], np.float32).reshape(-1, captured.shape[-1])
    features = np.asarray(sae.encode(x))
    error = np.sum((np.asarray(sae.decode(features)) - x) ** 2, axis=1)
    spliced = jaxinterp.Patch(sae.site, sae.decode(sae.encode(captured)), positions=np.arange(1, heldout.shape[1]))
    clean, with_sae = next_token_loss(model, heldout), next_token_loss(model, heldout, spliced)
    return {"tokens": len(x), "mse": float(np.mean(error) / x.shape[1]),
            "fraction_of_variance_unexplained": float(np.sum(error) / np.sum((x - x.mean(0)) ** 2)),
            "l0": float(np.mean(np.sum(features > 0, axis=1))),
            "dead_features": float(np.mean(~np.any(features > 0, axis=0))),
            "cross_entropy_clean": clean, "cross_entropy_spliced": with_sae,
            "cross_entropy_increase": with_sae - clean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/sae_smollm2")
    args = parser.parse_args()
    folder = output_dir(args.out)
    settings = Settings()
    model = jaxinterp.load("smollm2", progress=False)
    sae, record = load_or_train(model, settings)
    results = {"model": "smollm2", "site": settings.site, "d_in": int(sae.W_enc.shape[0]),
               "d_sae": int(sae.W_enc.shape[1]), "settings": record["settings"], "cache_entry": cache_entry(settings),
               "train_activations": record["activations"], "collect_seconds": record["collect_seconds"],
               "train_seconds": record["train_seconds"], "heldout": report(model, sae, chunks(model.tokenizer, settings)[1])}
    print(f"{settings.site}: trained in {record['train_seconds']:.0f} s;",
          {k: round(v, 4) for k, v in results["heldout"].items()})
    save_json(folder, results)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, name in zip(axes, ("mse", "l0")):
        ax.plot(record["curves"][name])
        ax.set(xlabel="step", ylabel=name, title=f"training {name} (scaled activations)")
    axes[0].set_yscale("log")
    save_figure(fig, folder, "training.png")


if __name__ == "__main__":
    main()
