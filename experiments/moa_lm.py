"""MoA vs a dense Transformer of no smaller compute: byte-level LMs on Python's docstrings.

    python -m experiments.moa_lm [--steps 400] [--out results/moa_lm]

Both models are 4-block, width-128, byte-vocabulary (256) language models with the same
gated MLP, trained with the same seed, data order, optimiser and schedule on the docstrings
of 63 standard-library modules (`jaxinterp.data.pydocs`, ~0.6 MB; a seeded 90/10 split by
document). The dense baseline has 4 heads of 32; MoA (Zhang et al. 2022) has 8 attention
experts of width 64 with k = 2 selected per token, which is equal attention-core compute and
fewer projection MACs than the baseline (both counted analytically below). MoA trains with
the paper's auxiliary losses (switch 0.01, z 0.001) added per token (`per_token_mean`).

Reports validation bits per byte and perplexity per byte, MACs per token, measured step
time (our MoA computes every expert's query and then selects, so its wall clock is not its
MAC count), and head (expert) utilisation: the share of tokens routed to each expert per
block on validation text. Writes results.json, curves.png and utilisation.png.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from experiments.markdown import number, signed, table
from experiments.outputs import output_dir, plt, save_figure, save_json
from jaxinterp.data.pydocs import stdlib_docstrings
import jaxinterp
from jaxinterp.models import init_params, make_batch
from jaxinterp.models.llama import LlamaConfig
from jaxinterp.models.moa import MoAConfig, moa_loss

WIDTH, LAYERS, MLP, VOCAB = 128, 4, 384, 256


def configs() -> dict[str, object]:
    """The dense baseline and the MoA model (equal width, depth, MLP and vocabulary)."""
    common = dict(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=MLP, num_layers=LAYERS, tie_word_embeddings=True)
    return {
        "dense": LlamaConfig(num_heads=4, num_kv_heads=4, head_dim=32, **common),
        "moa": MoAConfig(num_experts=8, top_k=2, head_dim=64, **common),
    }


def macs_per_token(config, context: int) -> dict[str, float]:
    """Multiply-accumulates per token (causal attention over (context + 1) / 2 keys on average)."""
    d, keys = config.hidden_size, (context + 1) / 2
    if isinstance(config, MoAConfig):  # k query/output experts, one shared K/V, the router
        projections = 2 * config.top_k * d * config.head_dim + 2 * d * config.head_dim + d * config.num_experts
    else:
        projections = 2 * d * config.num_heads * config.head_dim + 2 * d * config.num_kv_heads * config.head_dim
    core = 2 * config.num_heads * config.head_dim * keys
    mlp = 3 * d * config.intermediate_size
    total = config.num_layers * (projections + core + mlp) + d * config.vocab_size
    return {"attention_projections": config.num_layers * projections, "attention_core": config.num_layers * core,
            "total": total}


def corpus(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) byte streams: documents split 90/10 by a seeded permutation."""
    docs = [d.text for d in stdlib_docstrings()]
    order = np.random.default_rng(seed).permutation(len(docs))
    cut = int(0.9 * len(docs))
    join = lambda idx: np.frombuffer("\n\n".join(docs[i] for i in idx).encode("utf-8"), np.uint8).astype(np.int32)  # noqa: E731
    return join(order[:cut]), join(order[cut:])


def loss_fn(config, params, tokens):
    """Mean next-byte cross-entropy (+ MoA's auxiliary losses) on a [B, T + 1] window batch."""
    batch = make_batch(tokens[:, :-1])
    sites = ("blocks.*.attn.router_logits", "blocks.*.attn.gates") if isinstance(config, MoAConfig) else ()
    output = jaxinterp.Model(config, params).apply(batch, capture=sites)
    captured = output.captured
    if isinstance(config, MoAConfig):
        return moa_loss(output.logits, tokens[:, 1:], batch.mask, captured, num_layers=config.num_layers)
    ce = optax.softmax_cross_entropy_with_integer_labels(output.logits, tokens[:, 1:]).mean()
    return ce, {"ce": ce}


def train(config, train_bytes, valid_windows, *, steps, batch_size, context, seed, eval_every):
    """Trains one model with AdamW (warm-up + cosine); returns params, curves and step time."""
    params = init_params(config, jax.random.key(seed))
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, steps // 10, steps, 3e-4)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, key):
        starts = jax.random.randint(key, (batch_size,), 0, train_bytes.shape[0] - context - 1)
        tokens = jax.vmap(lambda s: jax.lax.dynamic_slice(train_bytes, (s,), (context + 1,)))(starts)
        (loss, parts), grads = jax.value_and_grad(lambda p: loss_fn(config, p, tokens), has_aux=True)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, parts

    evaluate = jax.jit(lambda p, w: loss_fn(config, p, w)[1]["ce"])
    keys = jax.random.split(jax.random.key(seed + 1), steps)  # same data order for every model
    curves = {"step": [], "train_ce": [], "valid_ce": []}
    params, state, _ = step(params, state, keys[0])  # compile outside the timed steps
    seconds = 0.0
    for i in tqdm(range(1, steps), desc=config.family):
        started = time.perf_counter()
        params, state, parts = jax.block_until_ready(step(params, state, keys[i]))
        seconds += time.perf_counter() - started
        if i % eval_every == 0 or i == steps - 1:
            curves["step"].append(i)
            curves["train_ce"].append(float(parts["ce"]))
            curves["valid_ce"].append(float(np.mean([evaluate(params, w) for w in valid_windows])))
    return params, curves, seconds / (steps - 1)


def utilisation(config: MoAConfig, params, valid_windows) -> np.ndarray:
    """[layers, experts] share of validation tokens whose top-k includes each expert."""
    run = jax.jit(lambda p, w: jaxinterp.Model(config, p).apply(make_batch(w[:, :-1]),
                                                                capture=("blocks.*.attn.gates",)).captured)
    totals = sum(np.stack([np.asarray(c[f"blocks.{i}.attn.gates"] > 0).mean((0, 1)) for i in range(config.num_layers)])
                 for c in (run(params, w) for w in valid_windows))
    return totals / len(valid_windows)


def report(results: dict) -> str:
    """The measured section of docs/moa.md: per model its parameters, MACs per token, step time and
    final validation bits per byte (one training run each, no interval); the validation curve of
    both at every evaluation; MoA's routing balance per block."""
    settings, models = results["settings"], results["models"]
    dense, moa = models["dense"], models["moa"]
    lines = [f"{settings['steps']} training steps of batch {settings['batch_size']} x {settings['context']} bytes, "
             f"seed {settings['seed']}, one run per model (no interval); {results['corpus_bytes']['train']} training "
             f"bytes, validation on {results['corpus_bytes']['valid_scored']} scored bytes.", ""]
    rows = []
    for name, m in models.items():
        c = m["config"]
        shape = (f"{c['num_experts']} experts x {c['head_dim']}, k = {c['top_k']}" if "num_experts" in c
                 else f"{c['num_heads']} heads x {c['head_dim']}")
        rows.append((f"{name} ({shape})", number(m["parameters"] / 1e6, 3) + " M",
                     number(m["parameters"] / dense["parameters"]), number(m["macs_per_token"]["total"] / 1e3) + " k",
                     number(m["macs_per_token"]["total"] / dense["macs_per_token"]["total"]),
                     number(m["seconds_per_step"]), number(m["valid_bits_per_byte"], 4),
                     "-" if m is dense else signed(m["valid_bits_per_byte"] - dense["valid_bits_per_byte"], 3)))
    lines.append(table(["model", "params", "params / dense", "MACs / token", "MACs / dense", "s / step",
                        "valid bits per byte", "minus dense"], rows))
    bits = {name: [ce / math.log(2) for ce in m["curves"]["valid_ce"]] for name, m in models.items()}
    lines += ["", table(["step", "dense valid bits per byte", "MoA valid bits per byte", "MoA minus dense"],
                        [(step, number(d, 4), number(a, 4), signed(a - d, 3))
                         for step, d, a in zip(dense["curves"]["step"], bits["dense"], bits["moa"])])]
    uniform = moa["config"]["top_k"] / moa["config"]["num_experts"]
    lines += ["", table(["MoA block", "load entropy / log E", "least-used expert's token share",
                         f"most-used expert's token share (uniform {number(uniform)})"],
                        [(block, number(entropy), number(min(share)), number(max(share)))
                         for block, (entropy, share) in enumerate(zip(moa["load_entropy_over_log_E"],
                                                                      moa["expert_token_share"]))])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--valid-batches", type=int, default=8)
    parser.add_argument("--out", default="results/moa_lm")
    args = parser.parse_args()
    folder = output_dir(args.out)

    train_bytes, valid_bytes = corpus(args.seed)
    span = args.context + 1
    windows = valid_bytes[: (len(valid_bytes) // span) * span].reshape(-1, span)
    per_batch = min(args.batch_size, len(windows) // args.valid_batches)
    valid_windows = [jnp.asarray(windows[i * per_batch:(i + 1) * per_batch]) for i in range(args.valid_batches)]
    results = {"corpus_bytes": {"train": int(train_bytes.size), "valid_scored": int(per_batch * args.valid_batches * args.context)},
               "settings": vars(args), "models": {}}
    curves = {}
    for name, config in configs().items():
        params, curves[name], seconds = train(
            config, jnp.asarray(train_bytes), valid_windows, steps=args.steps, batch_size=args.batch_size,
            context=args.context, seed=args.seed, eval_every=args.eval_every,
        )
        valid_ce = curves[name]["valid_ce"][-1]
        results["models"][name] = {
            "config": config.to_dict(),
            "parameters": int(sum(x.size for x in jax.tree.leaves(params))),
            "macs_per_token": macs_per_token(config, args.context),
            "seconds_per_step": seconds,
            "valid_bits_per_byte": valid_ce / math.log(2),
            "valid_perplexity_per_byte": math.exp(valid_ce),
            "curves": curves[name],
        }
        if isinstance(config, MoAConfig):
            share = utilisation(config, params, valid_windows)
            results["models"][name]["expert_token_share"] = share
            load = share / share.sum(1, keepdims=True)
            results["models"][name]["load_entropy_over_log_E"] = (-(load * np.log(load + 1e-12)).sum(1) / np.log(config.num_experts))
    save_json(folder, results)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(curve["step"], np.array(curve["valid_ce"]) / math.log(2), label=f"{name} (valid)")
        ax.plot(curve["step"], np.array(curve["train_ce"]) / math.log(2), "--", alpha=0.6, label=f"{name} (train batch)")
    ax.set(xlabel="step", ylabel="bits per byte", title="Byte-level LM on stdlib docstrings")
    ax.legend()
    save_figure(fig, folder, "curves.png")
    share = results["models"]["moa"]["expert_token_share"]
    fig, ax = plt.subplots(figsize=(6, 3))
    image = ax.imshow(share, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set(xlabel="expert", ylabel="block", title="MoA: share of validation tokens routed to each expert (k=2 of 8)")
    fig.colorbar(image, ax=ax)
    save_figure(fig, folder, "utilisation.png")
    for name, model in results["models"].items():
        print(f"{name}: {model['valid_bits_per_byte']:.3f} bits/byte, {model['parameters']} params, "
              f"{model['macs_per_token']['total'] / 1e6:.2f} M MACs/token, {model['seconds_per_step'] * 1e3:.0f} ms/step")


if __name__ == "__main__":
    main()
