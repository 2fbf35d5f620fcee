"""The `jaxinterp` command line: one entry point, subcommands that share their options.

    jaxinterp demo                                    the main job on the default model
    jaxinterp convert SRC DST                         checkpoint -> orbax directory
    jaxinterp generate PROMPT [--edit NAME k=v ...]   generation under edits
    jaxinterp capture TEXT --sites GLOB... --out F    activations to .safetensors / .npz
    jaxinterp sites                                   every site with its shape
    jaxinterp attention TEXT --out DIR                attention statistics and figures
    jaxinterp patch [--clean C --corrupted X]         activation patching grid of a prompt pair (JSON + heatmap)
    jaxinterp attribute --prompt Q [--image F] --html R   attribution maps and an HTML report
    jaxinterp experiment NAME [ARGS...]               run a script of experiments/
    jaxinterp data bigbench TASK                      benchmark data via the package registry
    jaxinterp plan MODEL --mesh 4x2 --strategy fsdp   memory per device, from shapes alone

Every subcommand takes `--model`, `--dtype`, `--seed` and `--out`. Errors print one line
with the fix; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXAMPLES = {
    "demo": "jaxinterp demo --prompt 'Why is the sky blue?' --out demo_out",
    "convert": "jaxinterp convert path/to/hf_checkpoint converted/ --dtype bfloat16",
    "generate": "jaxinterp generate 'What is the capital of France?' --chat --edit scale_head layer=5 head=3 scale=0",
    "capture": "jaxinterp capture 'The capital of France is' --sites 'blocks.*.attn.probs' --out acts.safetensors",
    "sites": "jaxinterp sites --model smollm2",
    "attention": "jaxinterp attention 'The capital of France is Paris.' --out attention_out",
    "attribute": "jaxinterp attribute --prompt 'What is the capital of France?' --method integrated_gradients "
                 "--html report.html",
    "patch": "jaxinterp patch --site attn.head_out --out patch_out",
    "experiment": "jaxinterp experiment small_vlm --help",
    "data": "jaxinterp data bigbench arithmetic --out arithmetic.jsonl",
    "plan": "jaxinterp plan llava-1.5-7b --mesh 4x2 --strategy fsdp --dtype bfloat16",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (the usage itself is one `--help` away)."""

    def error(self, message: str):
        from jaxinterp.errors import shown

        print(f"{self.prog}: error: {shown(message, 500)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    shared = _Parser(add_help=False)
    shared.add_argument("--model", default="smollm2", help="built-in name, checkpoint path or converted directory")
    shared.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    shared.add_argument("--seed", type=int, default=0)
    shared.add_argument("--out", default=None, help="output file or folder (see each command)")
    shared.add_argument("--debug", action="store_true", help="show the full traceback on errors")

    parser = _Parser(prog="jaxinterp", description="Transformer models open to inspection and surgery in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[shared], help=help, description=help, epilog=f"example: {EXAMPLES[name]}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    demo = command("demo", "answer a chat prompt and map per-head attention entropy (writes demo.png, demo.json)")
    demo.add_argument("--prompt", default=None, help="question to answer (default: What is the capital of France?)")
    demo.add_argument("--max-new-tokens", type=int, default=48)

    convert = command("convert", "convert a checkpoint (HF directory, .safetensors, .bin, .gguf) to an orbax directory")
    convert.add_argument("src")
    convert.add_argument("dst")

    generate = command("generate", "generate text, optionally under named edits, streaming tokens")
    generate.add_argument("prompt", nargs="+")
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--top-k", type=int, default=None)
    generate.add_argument("--top-p", type=float, default=None)
    generate.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template")
    generate.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    generate.add_argument("--edit", action="append", nargs="+", default=[], metavar=("NAME", "KEY=VALUE"),
                          help="a named edit and its fields, repeatable (see jaxinterp.edit_registry)")

    capture = command("capture", "run text and save the activations at the given sites (.safetensors or .npz)")
    capture.add_argument("text", nargs="+")
    capture.add_argument("--sites", nargs="+", required=True, help="site patterns, e.g. 'blocks.*.attn.probs'")
    capture.add_argument("--chat", action="store_true")

    command("sites", "list every site of the model with its shape for a small example input")

    attention = command("attention", "per-layer, per-head attention entropy and ART m-index of a text, with figures")
    attention.add_argument("text")
    attention.add_argument("--chat", action="store_true")

    patch = command("patch", "activation (or attribution) patching of a clean prompt into a corrupted one over "
                             "layers x positions or heads, with a logit-difference metric (writes patch.json, patch.png)")
    patch.add_argument("--clean", default=IOI["clean"], help="the clean prompt")
    patch.add_argument("--corrupted", default=IOI["corrupted"], help="the corrupted prompt (same number of tokens)")
    patch.add_argument("--answer", default=IOI["answer"], help="the clean answer (its first token is read)")
    patch.add_argument("--wrong", default=IOI["wrong"], help="the competing answer (its first token is read)")
    patch.add_argument("--site", default="resid_pre", choices=PATCH_SITES)
    patch.add_argument("--noising", action="store_true", help="write the corrupted run into the clean one instead")
    patch.add_argument("--attribution", action="store_true", help="first-order attribution patching (one backward)")
    patch.add_argument("--qk-fix", action="store_true",
                       help="with --attribution and --site attn.q or attn.k: AtP*'s QK fix (exact attention pattern)")

    from jaxinterp.attribution.cli import add_arguments as add_attribute_arguments

    add_attribute_arguments(command("attribute", "attribution maps of the model's answer over tokens or image patches; "
                                                 "--html writes a self-contained report, --out the maps (.npz)"))

    experiment = command("experiment", "run an experiment script of the source checkout's experiments/ folder")
    experiment.add_argument("name")
    experiment.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the experiment")

    data = command("data", "fetch benchmark data through the package registry and write it as JSON lines")
    data.add_argument("source", choices=["bigbench", "reasoning-gym"])
    data.add_argument("task")
    data.add_argument("--size", type=int, default=100, help="items to generate (reasoning-gym)")

    plan = command("plan", "bytes per device of parameters, a prefill and the KV cache on a mesh, "
                           "from shapes alone (no weights are read)")
    plan.add_argument("source", help="a named size (llama-2-7b, llava-1.5-7b, llada-8b, qwen2-7b), "
                                     "a checkpoint folder or a .gguf file")
    plan.add_argument("--mesh", default="8", help="mesh axis sizes, e.g. 8 or 4x2 (data x model)")
    plan.add_argument("--strategy", default="fsdp", choices=["data", "fsdp", "tensor"])
    plan.add_argument("--batch", type=int, default=1)
    plan.add_argument("--prefill", type=int, default=2048, help="prefill length in tokens")
    plan.add_argument("--cache", type=int, default=4096, help="KV cache slots per row")
    return parser


def _model(args):
    import jaxinterp

    return jaxinterp.load(args.model, dtype=args.dtype)


def _generate(args) -> None:
    from jaxinterp.edit_registry import make
    from jaxinterp.generate import stream_printer

    model = _model(args)
    edits = [make(spec[0], spec[1:], model) for spec in args.edit]
    prompts = args.prompt
    out = model.generate(prompts, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         seed=args.seed, stop=args.stop, edits=edits, chat=args.chat,
                         stream=stream_printer(model.tokenizer) if len(prompts) == 1 else None)
    if len(prompts) == 1:
        print()
    else:
        for prompt, text in zip(prompts, out.texts):
            print(f"{prompt!r} -> {text!r}")
    if args.out:
        _write_json(args.out, {"prompts": prompts, "texts": out.texts, "tokens": out.tokens,
                               "edits": [" ".join(spec) for spec in args.edit], "seed": args.seed})


def _capture(args) -> None:
    import numpy as np

    model = _model(args)
    run = model.run(model.encode(args.text, chat=args.chat), capture=args.sites)
    arrays = {name: np.asarray(value) for name, value in run.captured.items()}
    out = _with_parent(args.out or "activations.safetensors")
    if out.endswith(".npz"):
        np.savez(out, **arrays)
    else:
        import safetensors.numpy

        safetensors.numpy.save_file(arrays, out)
    print(f"wrote {len(arrays)} sites to {out}")


def _sites(args) -> None:
    from jaxinterp.models import example_batch

    model = _model(args)
    for name, shape in model.site_shapes(example_batch(model.config)).items():
        print(f"{name:40s} {str(tuple(shape.shape)):24s} {shape.dtype}")


def _attention(args) -> None:
    from jaxinterp.attention import head_statistics
    from jaxinterp.demo import format_table
    from jaxinterp.viz import layer_head_heatmap

    model = _model(args)
    out = args.out or "jaxinterp-attention"
    os.makedirs(out, exist_ok=True)
    stats = head_statistics(model, model.encode(args.text, chat=args.chat))
    figures = {"entropy": "normalised entropy (1 = uniform over visible keys)",
               "m_index": "ART m-index (higher = more local)"}
    for name, label in figures.items():
        print(f"{label}:\n{format_table(stats[name])}")
        layer_head_heatmap(stats[name], title=f"{label}\n{args.text[:60]!r}", colorbar=name,
                           path=os.path.join(out, f"{name}.png"))
    _write_json(os.path.join(out, "attention.json"),
                {"text": args.text, **{name: stats[name].round(6).tolist() for name in figures}})
    print(f"wrote {out}/entropy.png, {out}/m_index.png and {out}/attention.json")


# Sites `jaxinterp patch` grids over (those of jaxinterp.patching, listed here so --help needs no import of jax).
PATCH_SITES = ("resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out", "attn.head_out", "attn.q", "attn.k")

# The indirect-object-identification pair (Wang et al. 2022): the subject is swapped in the corrupted prompt.
IOI = {"clean": "When Mary and John went to the store, John gave a drink to",
       "corrupted": "When Mary and John went to the store, Mary gave a drink to", "answer": " Mary", "wrong": " John"}


def _patch(args) -> None:
    import numpy as np

    from jaxinterp import patching

    model = _model(args)
    answer, wrong = (model.tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in (args.answer, args.wrong))
    if args.qk_fix and not args.attribution:
        from jaxinterp.errors import ArgumentError

        raise ArgumentError("--qk-fix: needs --attribution (activation patching is exact already)")
    options = {"qk_fix": True} if args.qk_fix else {}
    run = patching.attribution_patching if args.attribution else patching.activation_patching
    result = run(model, args.clean, args.corrupted, patching.logit_diff(answer, wrong), site=args.site,
                 noising=args.noising, **options)
    out = args.out or "jaxinterp-patch"
    os.makedirs(out, exist_ok=True)
    _write_json(os.path.join(out, "patch.json"), {"clean_prompt": args.clean, "corrupted_prompt": args.corrupted,
                                                  "answer": args.answer, "wrong": args.wrong, **result.to_json()})
    result.figure(os.path.join(out, "patch.png"))
    best = np.unravel_index(np.argmax(result.normalised), result.values.shape)
    print(f"{result.method}, {args.site}: logit difference clean {result.clean:.3f}, corrupted {result.corrupted:.3f}; "
          f"largest normalised score {result.normalised[best]:.3f} at "
          + ", ".join(f"{axis} {result.labels[axis][i]!r}" for axis, i in zip(result.axes, best)))
    print(f"wrote {out}/patch.json and {out}/patch.png")


def _attribute(args) -> None:
    import numpy as np

    from jaxinterp.attribution.cli import run_attribute

    out = run_attribute(args)
    if args.out:
        maps = {name: np.asarray(value) for name, value in (("values", out.values), ("image", out.image),
                                                             ("tokens", out.tokens)) if value is not None}
        np.savez(_with_parent(args.out), sites=np.asarray(out.sites, dtype=str), **maps)
        print(f"wrote {', '.join(maps)} to {args.out}")


def _experiment(args) -> None:
    import subprocess

    from jaxinterp.errors import ArgumentError

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = os.path.join(root, "experiments")
    if not os.path.isdir(folder):
        raise ArgumentError("experiment: the experiments/ folder ships with the source checkout; "
                            "clone the repository and install it with `pip install -e .`")
    names = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))
    if args.name not in names:
        raise ArgumentError(f"experiment: unknown experiment {args.name!r}; available: {', '.join(names)}")
    result = subprocess.run([sys.executable, "-m", f"experiments.{args.name}", *args.args], cwd=root)
    if result.returncode:
        raise SystemExit(result.returncode)


def _data(args) -> None:
    rows = []
    if args.source == "bigbench":
        from jaxinterp.data.bigbench import load_task

        task = load_task(args.task)
        rows = [{"input": e.input, "target": list(e.target), "target_scores": e.target_scores} for e in task.examples]
        print(f"{task.name}: {len(rows)} examples")
    else:
        try:
            import reasoning_gym
        except ImportError:
            from jaxinterp.errors import ArgumentError

            raise ArgumentError("data reasoning-gym: install it with `pip install 'jaxinterp[data]'`") from None
        rows = [dict(item) for item in reasoning_gym.create_dataset(args.task, size=args.size, seed=args.seed)]
        print(f"{args.task}: {len(rows)} generated items (seed {args.seed})")
    out = args.out or f"{args.task.replace('/', '_')}.jsonl"
    with open(out, "w") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
    print(f"wrote {out}")


def _plan(args) -> None:
    import dataclasses

    from jaxinterp.plan import parse_mesh, plan

    result = plan(args.source, mesh=parse_mesh(args.mesh), strategy=args.strategy, dtype=args.dtype,
                  batch=args.batch, prefill=args.prefill, cache=args.cache)
    print(result.table())
    if args.out:
        _write_json(args.out, dataclasses.asdict(result))


def _with_parent(path: str) -> str:
    """`path`, its folder created if missing (an output may name a folder that does not exist yet)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


def _write_json(path: str, data) -> None:
    with open(_with_parent(path), "w") as f:
        json.dump(data, f, indent=2)


def _run(args: argparse.Namespace) -> None:
    import jaxinterp

    if args.command == "demo":
        from jaxinterp.demo import DEFAULT_PROMPT, run_demo

        run_demo(_model(args), prompt=args.prompt or DEFAULT_PROMPT, out=args.out or "jaxinterp-demo",
                 max_new_tokens=args.max_new_tokens)
    elif args.command == "convert":
        print(f"wrote {jaxinterp.convert(args.src, args.dst, dtype=args.dtype)}")
    else:
        {"generate": _generate, "capture": _capture, "sites": _sites, "attention": _attention,
         "attribute": _attribute, "patch": _patch, "experiment": _experiment, "data": _data, "plan": _plan}[args.command](args)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # transformers advises at import that without torch "models won't be available"; jaxinterp runs
    # its own models, so on the command line that advice only interrupts the output.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from jaxinterp.errors import JaxinterpError, shown

    try:
        _run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"jaxinterp {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line, never a traceback: a user's mistake, the system's refusal, or our bug
        if args.debug:
            raise
        if isinstance(e, JaxinterpError):
            message = str(e)
        elif isinstance(e, OSError):
            message = f"{e.strerror or type(e).__name__}: {e.filename or e}"
        else:
            message = f"internal error ({type(e).__name__}: {e}); rerun with --debug and report the traceback"
        print(f"jaxinterp {args.command}: error: {shown(message, 2000)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
