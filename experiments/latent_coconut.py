"""A small Coconut model trained from scratch, then ILI's probes and decode-time interventions on it.

    python -m experiments.latent_coconut [--cot-steps 300] [--steps 100] [--out results/latent_coconut]

No trained Coconut checkpoint can be downloaded here, so this script trains one on a seeded
synthetic 3-step task: `Q a o b o c o d` with digits and o in {+, -} computed left to right
mod 10; the CoT is `a o b = r1 ; r1 o c = r2 ; r2 o d = r3 ;` and the answer `# r3 <eos>`.
Model: a 3-block Llama (width 64, tied embeddings), trained with AdamW through Coconut's
curriculum (c = 1 thought per step as for ProsQA, stages 0..3: stage s replaces the first s
steps by s latent slots, so K = 3; loss only after `<eot>`; backpropagation through the thoughts), saved with
orbax (`jaxinterp.loader.save`) and reloaded. Then on held-out items (exemplar bank and
probe-training items from separate seeds):

- accuracy with K = 3 thoughts (greedy decoding of `# r3`), and of the stage-0 CoT model;
- linear CKA of per-step thought means (zbar_t) with the CoT step states, the cosine mapper (test cosine
  vs identity), the logit-lens and nearest-token readouts, the energy chain monotonicity;
- causal probes: drop@k (keep the first k thoughts), transplant from a donor, slerp toward a
  retrieved anchor, the oracle gradient step: flip rate and Delta log p of the gold answer;
- the five interventions with the spec's defaults: accuracy vs no intervention.

Writes results.json, training.png and probes.png.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats
from tqdm.auto import tqdm

import jaxinterp
from experiments.markdown import number, signed, table
from experiments.outputs import output_dir, plt, save_figure, save_json
from jaxinterp.loader import save as save_model
from jaxinterp.methods import latent
from jaxinterp.methods import latent_interventions as li
from jaxinterp.methods import latent_probes as lp
from jaxinterp.models import init_params, make_batch
from jaxinterp.models.llama import LlamaConfig

PLUS, MINUS, EQUALS, SEMI, HASH, QUERY, BOT, LATENT, EOT, EOS, PAD = range(10, 21)
STEPS, PER_STEP, QUESTION = 3, 1, 8  # reasoning steps, thoughts per step (c = 1 as Coconut's ProsQA), question tokens
CONFIG = LlamaConfig(vocab_size=24, hidden_size=64, intermediate_size=256, num_layers=3, num_heads=4, num_kv_heads=4,
                     head_dim=16, tie_word_embeddings=True, eos_token_ids=(EOS,), pad_token_id=PAD)


def task(count: int, seed: int):
    """Questions [N, 8], CoT steps [N, 3, 5] and answers [N] of the synthetic task."""
    rng = np.random.default_rng(seed)
    digits = rng.integers(0, 10, (count, 4))
    ops = rng.integers(0, 2, (count, 3))
    questions = np.concatenate([np.full((count, 1), QUERY), np.stack(
        [digits[:, 0], PLUS + ops[:, 0], digits[:, 1], PLUS + ops[:, 1], digits[:, 2], PLUS + ops[:, 2], digits[:, 3]], 1)], 1)
    steps, total = [], digits[:, 0]
    for t in range(STEPS):
        new = np.where(ops[:, t] == 0, total + digits[:, t + 1], total - digits[:, t + 1]) % 10
        steps.append(np.stack([total, PLUS + ops[:, t], digits[:, t + 1], np.full(count, EQUALS), new], 1))
        steps[-1] = np.concatenate([steps[-1], np.full((count, 1), SEMI)], 1)
        total = new
    return questions.astype(np.int32), np.stack(steps, 1).astype(np.int32), total.astype(np.int32)


def stage_rows(questions, steps, answers, stage: int):
    """Stage-s sequences: question <bot> <latent>*(c s) <eot> steps s+1.. # answer <eos>; and where the loss starts."""
    count, k = len(questions), PER_STEP * stage
    head = [questions, np.full((count, 1), BOT), np.full((count, k), LATENT), np.full((count, 1), EOT)]
    tail = [steps[:, stage:].reshape(count, -1), np.full((count, 1), HASH), answers[:, None], np.full((count, 1), EOS)]
    tokens = np.concatenate(head + tail, 1).astype(np.int32)
    return tokens, QUESTION + 1 + k  # the <eot> position: its logits predict the first target token


def slots_for(count: int, k: int) -> jnp.ndarray:
    return jnp.tile(jnp.arange(QUESTION + 1, QUESTION + 1 + k, dtype=jnp.int32), (count, 1))


def loss_fn(params, tokens, k: int, start: int):
    batch = make_batch(tokens)
    slots = slots_for(tokens.shape[0], k)
    model = jaxinterp.Model(CONFIG, params)
    z = latent.thoughts_forward(model, batch, slots, None)
    logits = model.apply(batch, edits=(latent.write_thoughts(z, slots),)).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, start:-1], tokens[:, start + 1:]).mean()


def train(cot_steps: int, steps_per_stage: int, batch_size: int, seed: int):
    params = init_params(CONFIG, jax.random.key(seed))
    questions, steps, answers = task(50_000, seed)
    rng = np.random.default_rng(seed)
    curve = []
    for stage in range(STEPS + 1):
        count = cot_steps if stage == 0 else steps_per_stage
        optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(0, 1e-3, min(50, count // 4), count), weight_decay=0.01)
        state = optimizer.init(params)  # Coconut resets the optimizer at every stage
        tokens, start = stage_rows(questions, steps, answers, stage)

        @jax.jit
        def update(params, state, batch):
            loss, grads = jax.value_and_grad(loss_fn)(params, batch, PER_STEP * stage, start)
            updates, state = optimizer.update(grads, state, params)
            return optax.apply_updates(params, updates), state, loss

        for _ in tqdm(range(count), desc=f"stage {stage}"):
            params, state, loss = update(params, state, tokens[rng.integers(0, len(tokens), batch_size)])
            curve.append((stage, float(loss)))
    return params, curve


def answer_of(row: list[int]) -> int:
    """The digit after the first '#' of a generated row (-1 when the format breaks)."""
    at = row.index(HASH) if HASH in row else len(row)
    return row[at + 1] if at + 1 < len(row) and row[at + 1] < 10 else -1


def decode_answers(model, prompt, edits=()):
    """Greedy `# r <eos>` after the prompt, parsed by `answer_of`."""
    return np.array([answer_of(row) for row in model.generate(prompt, 3, edits=edits, stop=[]).tokens])


ANSWERS = 10  # the answer is a digit (mod 10): chance accuracy is 1 / ANSWERS


def report(results: dict) -> str:
    """The measured section of docs/latent_reasoning.md: accuracy of the CoT and Coconut models
    against chance, the probe readouts, the causal probes and the five interventions (flip rate,
    accuracy and mean Delta log p of the gold answer on the held-out items).

    The results hold means only (no intervals); the item count is that of the evaluation thoughts
    in the nearest-token histogram over K thoughts per item."""
    k = PER_STEP * STEPS
    histogram = results["probes"]["nearest_token_histogram"]
    n = sum(histogram) // k
    top = int(np.argmax(histogram))
    base = results["coconut_accuracy"]
    lines = [f"{n} held-out items, K = {k} thoughts each; training took {number(results['train_seconds'] / 60, 2)} "
             f"minutes (final train CE {number(results['final_loss'])}). The results hold means without intervals.", ""]
    lines.append(table(["model", f"answer accuracy (n = {n})", "chance"],
                       [("stage-0 CoT (full chain of thought)", number(results["cot_accuracy"]), number(1 / ANSWERS)),
                        (f"Coconut, K = {k} thoughts", number(base), number(1 / ANSWERS))]))
    probes, mapper = results["probes"], results["probes"]["mapper"]
    lines += ["", table(["probe", "value"], [
        ("linear CKA, thought means vs CoT step states", number(probes["linear_cka"])),
        ("mapper cosine: test / validation / identity map", f"{number(mapper['test_cosine'])} / "
                                                           f"{number(mapper['val_cosine'])} / {number(mapper['identity_cosine'])}"),
        ("logit-lens top-1 token in the step", number(probes["lexical_top1_in_step"])),
        ("logit-lens top-1 token is the step result", number(probes["lexical_top1_is_step_result"])),
        ("nearest token is the step result", number(probes["nearest_token_is_step_result"])),
        ("most frequent nearest token (thoughts)", f"id {top}: {histogram[top]} of {sum(histogram)}"),
        ("energy chains strictly decreasing (share)", number(probes["energy_monotone_fraction"])),
        ("energy: Spearman rho with thought position", signed(probes["energy_spearman_with_position"])),
    ])]

    def rows(found: dict) -> list[tuple]:
        return [(name.replace("_", " "), number(e["flip_rate"]), number(e["accuracy"]), signed(e["accuracy"] - base, 3),
                 signed(e["delta_log_p"], 4)) for name, e in found.items()]

    header = ["", f"flip rate (n = {n})", "accuracy", "accuracy change vs no intervention", "mean Delta log p(gold)"]
    lines += ["", "Causal probes:", "", table(["probe", *header[1:]], rows(results["causal_probes"]))]
    donor = results["causal_probes"].get("transplant", {}).get("to_donor_answer")
    if donor is not None:
        lines += ["", f"Transplant: {number(donor)} of the changed answers became the donor's answer."]
    lines += ["", "Interventions at the spec's defaults:", "",
              table(["intervention", *header[1:]], rows(results["interventions"]))]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cot-steps", type=int, default=300, help="training steps of stage 0 (full CoT)")
    parser.add_argument("--steps", type=int, default=100, help="training steps of each latent stage")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/latent_coconut")
    args = parser.parse_args()
    folder = output_dir(args.out)
    started = time.perf_counter()
    params, curve = train(args.cot_steps, args.steps, args.batch, args.seed)
    path = save_model(jaxinterp.Model(CONFIG, params, source="coconut-synthetic"), os.path.join(folder, "model"))
    model = jaxinterp.load(path)
    results = {"train_seconds": time.perf_counter() - started, "checkpoint": path, "final_loss": curve[-1][1]}

    k = PER_STEP * STEPS
    sets = {name: task(args.eval, seed) for name, seed in (("eval", args.seed + 1), ("bank", args.seed + 2),
                                                            ("probe", args.seed + 3))}
    cot_q, cot_steps, cot_a = sets["eval"]
    cot_prompt = make_batch(np.concatenate([cot_q, np.full((len(cot_q), 1), BOT), np.full((len(cot_q), 1), EOT)], 1))
    cot = model.generate(cot_prompt, STEPS * 6 + 3, stop=[])
    results["cot_accuracy"] = float(np.mean([answer_of(row) for row in cot.tokens] == cot_a))

    def prepared(name, k=k):
        questions, steps, answers = sets[name]
        prompt, slots = latent.latent_prompt(questions.tolist(), k=k, bot=BOT, latent=LATENT, eot=EOT, pad=PAD)
        return prompt, slots, steps, answers

    prompt, slots, steps, answers = prepared("eval")
    z = latent.continuous_thoughts(model, prompt, slots)
    base_edit = latent.write_thoughts(z, slots)
    base = decode_answers(model, prompt, base_edit)
    gold = jnp.stack([jnp.full(len(answers), HASH), jnp.asarray(answers)], 1)
    base_logp = latent.answer_log_prob(model, prompt, gold, edits=base_edit)
    results["coconut_accuracy"] = float(np.mean(base == answers))

    # -- probes ----------------------------------------------------------------------------
    def step_states(name):
        """c_t: final-norm state at each CoT step's ';' under teacher forcing (stage-0 format), and zbar_t."""
        questions, steps, answers = sets[name]
        tokens, _ = stage_rows(questions, steps, answers, 0)
        states = model.run(tokens, capture=["final_norm"])["final_norm"]
        ends = QUESTION + 2 + 6 * np.arange(STEPS) + 5
        p, s, _, _ = prepared(name)
        thoughts = np.asarray(latent.continuous_thoughts(model, p, s))
        zbar = thoughts.reshape(len(questions), STEPS, PER_STEP, -1).mean(2)
        return np.asarray(states[:, ends]), zbar, thoughts

    c_probe, zbar_probe, thoughts_probe = step_states("probe")
    c_eval, zbar_eval, thoughts_eval = step_states("eval")
    flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
    cka = [float(lp.linear_cka(flat(zbar_eval)[i:i + 64], flat(c_eval)[i:i + 64])) for i in range(0, len(flat(c_eval)) - 63, 64)]
    mapper, report = lp.train_mapper(flat(zbar_probe), flat(c_probe))
    test_cos = float(jnp.mean(lp.cosine(lp.apply_mapper(mapper, flat(zbar_eval)), flat(c_eval))))
    lens = np.asarray(jnp.argmax(lp.logit_lens(model, flat(zbar_eval)), -1)).reshape(-1, STEPS)
    nearest = np.asarray(lp.nearest_token(model.params["embed"], flat(thoughts_eval))).reshape(-1, k)
    in_step = np.array([[lens[i, t] in steps[i, t] for t in range(STEPS)] for i in range(len(lens))])
    energy = lp.train_energy(thoughts_probe)
    energies = np.asarray(lp.energy(energy, jnp.asarray(thoughts_eval)))
    results["probes"] = {
        "linear_cka": float(np.mean(cka)),
        "mapper": {"test_cosine": test_cos, "identity_cosine": float(jnp.mean(lp.cosine(flat(zbar_eval), flat(c_eval)))),
                   "val_cosine": report["val_cosine"]},
        "lexical_top1_in_step": float(in_step.mean()),
        "lexical_top1_is_step_result": float(np.mean(lens == steps[:, :, -2])),
        "nearest_token_is_step_result": float(np.mean(nearest.reshape(-1, STEPS, PER_STEP)[:, :, -1] == steps[:, :, -2])),
        "nearest_token_histogram": np.bincount(nearest.ravel(), minlength=CONFIG.vocab_size).tolist(),
        "energy_monotone_fraction": lp.monotone_fraction(energy, thoughts_eval),
        "energy_spearman_with_position": float(stats.spearmanr(np.tile(np.arange(k), len(energies)), energies.ravel())[0]),
    }

    # -- causal probes ---------------------------------------------------------------------
    def effect(prompt_, edits):
        new = decode_answers(model, prompt_, edits)
        return new, {"flip_rate": lp.flip_rate(base, new), "accuracy": float(np.mean(new == answers)),
                     "delta_log_p": float(jnp.mean(latent.answer_log_prob(model, prompt_, gold, edits=edits) - base_logp))}

    causal = {}
    for kept in range(k):
        p, s, _, _ = prepared("eval", kept)
        causal[f"drop@{kept}"] = effect(p, latent.write_thoughts(z[:, :kept], s))[1]
    donor = np.roll(np.arange(len(answers)), 1)
    new, causal["transplant"] = effect(prompt, latent.write_thoughts(z[donor], slots))
    changed = new != base
    causal["transplant"]["to_donor_answer"] = float(np.mean(new[changed] == base[donor][changed])) if changed.any() else 0.0
    bank_prompt, bank_slots, _, _ = prepared("bank")
    bank_z = latent.continuous_thoughts(model, bank_prompt, bank_slots)
    query_state = lambda p, zz, s: model.run(p, edits=latent.write_thoughts(zz, s), capture=["final_norm"])["final_norm"][:, -1]  # noqa: E731
    anchors = lp.retrieve_anchors(query_state(prompt, z, slots), query_state(bank_prompt, bank_z, bank_slots), bank_z[:, -1])
    gradient = latent.answer_gradient(model, prompt, slots, z, gold)
    interventions = {
        "A_mapper_transport": li.mapper_transport(slots, lp.apply_mapper, mapper, pair=(k - 2, k - 1)),
        "B1_anchor_slerp": li.anchor_slerp(slots, anchors),
        "B2_gradient_step_ORACLE": li.gradient_step(slots, gradient[:, 1]),
        "C1_tied_projection": li.tied_projection(slots, li.expected_embeddings(model, prompt, slots, z)),
        "C2_energy_descent": li.energy_descent(slots, lp.energy, energy),
    }
    causal["slerp_alpha_0.5"] = effect(prompt, (base_edit, li.anchor_slerp(slots, anchors, alpha=0.5)))[1]
    causal["gradient_eta_0.5_ORACLE"] = effect(prompt, (base_edit, li.gradient_step(slots, gradient[:, 1], eta=0.5)))[1]
    results["causal_probes"] = causal
    results["interventions"] = {name: effect(prompt, (base_edit, edit))[1] for name, edit in interventions.items()}
    results["seconds"] = time.perf_counter() - started
    save_json(folder, results)

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([loss for _, loss in curve])
    for stage in range(1, STEPS + 1):
        ax.axvline(args.cot_steps + (stage - 1) * args.steps, color="grey", lw=0.5)
    ax.set_yscale("log")
    ax.set_xlabel("step (stages 0..3)")
    ax.set_ylabel("train CE")
    save_figure(fig, folder, "training.png")
    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(causal)
    ax.bar(names, [causal[n]["flip_rate"] for n in names])
    ax.set_ylabel("flip rate")
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    save_figure(fig, folder, "probes.png")
    print(f"coconut accuracy {results['coconut_accuracy']:.3f} (CoT {results['cot_accuracy']:.3f}); "
          f"CKA {results['probes']['linear_cka']:.2f}; mapper cos {test_cos:.2f}")
    for name, value in results["interventions"].items():
        print(f"{name:26s} accuracy {value['accuracy']:.3f} flips {value['flip_rate']:.3f} dlogp {value['delta_log_p']:+.3f}")


if __name__ == "__main__":
    main()
