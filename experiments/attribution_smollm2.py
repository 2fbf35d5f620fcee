"""Token attributions of SmolLM2's answers to factual questions.

    python -m experiments.attribution_smollm2 [--out results/attribution_smollm2]

SmolLM2 answers each question (greedy, chat template); the answer token that names the
expected answer (its first sub-token, else the answer's first token) is explained,
teacher-forced, by gradient x input and integrated gradients on the input embeddings
(16 Gauss-Legendre steps from the `<|endoftext|>` embedding), Grad-CAM and LLaVA-CAM over the
tokens at a middle layer (`mlp.in`, the post-attention norm's output LLaVA-CAM hooks), TAM and attention rollout. Since each question names one entity
the answer depends on ("France" for the capital of France), the maps are scored on the
question's tokens: the share of |attribution| on the entity's tokens (against the share a
uniform map would give) and whether the most attributed question token is one of them
(a token pointing game), both kept per question so every mean carries a bootstrap 95% interval
and the share a paired difference from the uniform map's share on the same question. Writes results.json, token strips and a bar chart.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import jaxinterp
from experiments.intervals import bootstrap_mean, paired_difference
from experiments.markdown import interval, number, signed, table
from experiments.outputs import output_dir, plt, save_figure, save_json
from jaxinterp.attribution import Tokens, attribute
from jaxinterp.models import segment_id
from jaxinterp.multimodal import encode
from jaxinterp.viz.report import token_texts
from jaxinterp.viz.token_strip import token_strips

QUESTIONS = [  # (question, entity the answer depends on, expected answer)
    ("What is the capital of France?", "France", "Paris"),
    ("What is the capital of Japan?", "Japan", "Tokyo"),
    ("What is the capital of Italy?", "Italy", "Rome"),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet", "Shakespeare"),
    ("What is the largest planet in the solar system?", "largest planet", "Jupiter"),
    ("What is the chemical symbol for gold?", "gold", "Au"),
    ("Which language is spoken in Brazil?", "Brazil", "Portuguese"),
    ("What is the boiling point of water in Celsius?", "boiling point of water", "100"),
    ("Who painted the Mona Lisa?", "Mona Lisa", "Leonardo"),
    ("What is the currency of the United Kingdom?", "United Kingdom", "pound"),
    ("How many legs does a spider have?", "spider", "eight"),
    ("What is the capital of Germany?", "Germany", "Berlin"),
]
LAYER = 15  # a middle layer of SmolLM2's 30 for the token CAMs
METHODS = [  # (row name, method, options)
    ("Gradient x input", "grad_x_input", {"site": "embed"}),
    ("Integrated gradients", "integrated_gradients", {"site": "embed", "steps": 16}),
    ("Grad-CAM", "grad_cam", {"site": f"blocks.{LAYER}.mlp.in"}),
    ("LLaVA-CAM", "llava_cam", {"site": f"blocks.{LAYER}.mlp.in", "threshold": None}),
    ("TAM", "tam", {}),
    ("Attention rollout", "rollout", {}),
]


def explained_positions(model, batch, answers: list[str], expected: list[str]) -> tuple[np.ndarray, list[bool]]:
    """[B] the position of the answer token that starts the expected answer (else the answer's first)."""
    positions, found = [], []
    for row, (answer, truth) in enumerate(zip(answers, expected)):
        where = np.flatnonzero(np.asarray(batch.segments[row]) == segment_id("answer"))
        ids = np.asarray(batch.tokens[row])[where]
        starts = [k for k in range(len(ids)) if truth.lower() in model.tokenizer.decode(ids[k:]).lower()
                  and truth.lower() not in model.tokenizer.decode(ids[k + 1:]).lower()]
        found.append(bool(starts))
        positions.append(int(where[starts[0] if starts else 0]))
    return np.asarray(positions, np.int32), found


def entity_tokens(model, batch, row: int, entity: str) -> np.ndarray:
    """[T] bool: the question tokens whose characters overlap the entity's mention."""
    where = np.flatnonzero(np.asarray(batch.segments[row]) == segment_id("question"))
    pieces = [model.tokenizer.decode([int(i)]) for i in np.asarray(batch.tokens[row])[where]]
    ends = np.cumsum([len(p) for p in pieces])
    start = "".join(pieces).lower().find(entity.lower())
    if start < 0:
        raise ValueError(f"entity {entity!r} not found in question tokens {pieces}")
    overlap = (ends > start) & (ends - np.array([len(p) for p in pieces]) < start + len(entity))
    marked = np.zeros(batch.tokens.shape[1], bool)
    marked[where[overlap]] = True
    return marked


def report(results: dict) -> str:
    """The SmolLM2 part of docs/attribution.md's measured section: per method, the mean share of
    |attribution| on the question's entity tokens with its paired difference from a uniform map's
    share, and the token pointing game, ranked by the share; intervals where the results hold
    per-question scores."""
    methods, n = results["methods"], results["questions"]
    ranked = sorted(methods, key=lambda name: methods[name]["entity_share"], reverse=True)
    uniform = results["uniform_entity_share"]

    def figure(name, key):
        per_item = methods[name].get("per_item", {})
        return interval(bootstrap_mean(per_item[key])) if key in per_item else number(methods[name][key])

    def versus_uniform(name):
        per_item = methods[name].get("per_item", {})
        if "entity_share" not in per_item or "uniform_entity_share" not in results.get("per_item", {}):
            return "above" if methods[name]["entity_share"] > uniform else "below"
        gap = paired_difference(results["per_item"]["uniform_entity_share"], per_item["entity_share"])
        return f"{signed(gap['mean'], 3)} [{signed(gap['ci95'][0], 3)}, {signed(gap['ci95'][1], 3)}]"

    rows = [(name, figure(name, "entity_share"), versus_uniform(name), figure(name, "entity_pointing"))
            for name in ranked]
    return "\n".join([
        f"{n} questions, {results['answers_with_expected_word']} of whose answers contain the "
        f"expected answer; a uniform map puts {number(uniform)} of its mass on the entity tokens.", "",
        table(["method", f"entity share (n = {n})", "minus the uniform map's share (paired)",
               f"entity pointing (n = {n})"], rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/attribution_smollm2")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    folder = output_dir(args.out)
    started = time.perf_counter()
    model = jaxinterp.load("smollm2", progress=False)
    texts = [q for q, _, _ in QUESTIONS]
    generated = model.generate(encode(model, texts, padding="left"), args.max_new_tokens)
    answers = [t.strip() for t in generated.texts]
    batch = encode(model, texts, answers=answers)
    positions, found = explained_positions(model, batch, answers, [a for _, _, a in QUESTIONS])
    target = Tokens.at(positions[:, None])
    entity = np.stack([entity_tokens(model, batch, r, e) for r, (_, e, _) in enumerate(QUESTIONS)])
    question = np.asarray(batch.segments) == segment_id("question")
    summary, maps = {}, {}
    for name, method, options in METHODS:
        if method == "integrated_gradients":
            options = {**options, "baseline": model.params["embed"][model.tokenizer.eos_token_id]}
        t0 = time.perf_counter()
        out = attribute(model, batch, target, method=method, region="tokens", **options)
        scores = np.abs(np.asarray(jax.block_until_ready(out.tokens)[0]))
        maps[name] = np.asarray(out.tokens[0])
        on_question = np.where(question, scores, 0.0)
        share = (on_question * entity).sum(1) / np.maximum(on_question.sum(1), 1e-12)
        pointing = entity[np.arange(len(texts)), np.argmax(on_question, axis=1)]
        summary[name] = {"entity_share": float(share.mean()), "entity_pointing": float(pointing.mean()),
                         "per_item": {"entity_share": share.tolist(), "entity_pointing": pointing.astype(float).tolist()},
                         "seconds": time.perf_counter() - t0}
        print(f"{name:22s} entity share {share.mean():.3f}  pointing {pointing.mean():.3f}", flush=True)
    uniform_per_question = entity.sum(1) / question.sum(1)
    uniform = float(np.mean(uniform_per_question))
    rows = []
    for r, (q, e, truth) in enumerate(QUESTIONS):
        segments = np.asarray(batch.segments[r])  # from the user's turn on (the template's system text left out)
        keep = np.asarray(batch.mask[r]) & (np.arange(len(segments)) >= np.argmax(segments == segment_id("question")))
        tokens = token_texts(model.tokenizer, np.asarray(batch.tokens[r])[keep])
        rows.append({"question": q, "entity": e, "expected": truth, "answer": answers[r], "answer_found": found[r],
                     "explained_token": token_texts(model.tokenizer, [int(batch.tokens[r, positions[r]])])[0],
                     "tokens": tokens, "maps": {n: maps[n][r][keep].tolist() for n in maps}})
        if r < 3:
            highlight = int(np.cumsum(keep)[positions[r]] - 1)
            fig = token_strips(tokens, {n: maps[n][r][keep] for n in maps}, highlight=highlight,
                               title=f"{q} -> {answers[r]!r} (explaining {rows[-1]['explained_token']!r})")
            fig.savefig(f"{folder}/tokens_{r}.png", dpi=120)
            plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(summary)
    ax.barh(names[::-1], [summary[n]["entity_share"] for n in names][::-1], color="tab:blue")
    ax.axvline(uniform, color="k", ls="--", lw=1, label="uniform map")
    ax.set_xlabel("share of |attribution| on the question's entity tokens")
    ax.legend(fontsize=8)
    save_figure(fig, folder, "entity_share.png")
    save_json(folder, {"questions": len(QUESTIONS), "answers_with_expected_word": int(sum(found)),
                       "uniform_entity_share": uniform,
                       "per_item": {"uniform_entity_share": uniform_per_question.tolist()}, "methods": summary, "rows": rows,
                       "seconds": time.perf_counter() - started})
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
