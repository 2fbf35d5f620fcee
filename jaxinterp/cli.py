"""The `jaxinterp` command line.

    jaxinterp demo [--prompt TEXT] [--out DIR]      the main job on the default model
    jaxinterp convert SRC DST [--dtype bfloat16]    checkpoint -> orbax directory

Errors print one line with the fix; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys

EXAMPLES = {
    "demo": "example: jaxinterp demo --prompt 'Why is the sky blue?' --out demo_out",
    "convert": "example: jaxinterp convert path/to/hf_checkpoint converted/ --dtype bfloat16",
}


def _parser() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--model", default="smollm2", help="built-in name, checkpoint path or converted directory")
    shared.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    shared.add_argument("--seed", type=int, default=0)
    shared.add_argument("--debug", action="store_true", help="show the full traceback on errors")

    parser = argparse.ArgumentParser(prog="jaxinterp", description="Transformer models open to inspection and surgery in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[shared], help=help, description=help, epilog=EXAMPLES[name],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    demo = command("demo", "answer a chat prompt and map per-head attention entropy")
    demo.add_argument("--prompt", default=None, help="question to answer (default: What is the capital of France?)")
    demo.add_argument("--out", default="jaxinterp-demo", help="output folder for demo.png and demo.json")
    demo.add_argument("--max-new-tokens", type=int, default=48)

    convert = command("convert", "convert a checkpoint (HF directory, .safetensors, .bin, .gguf) to an orbax directory")
    convert.add_argument("src")
    convert.add_argument("dst")
    return parser


def _run(args: argparse.Namespace) -> None:
    import jaxinterp

    if args.command == "demo":
        from jaxinterp.demo import DEFAULT_PROMPT, run_demo

        model = jaxinterp.load(args.model, dtype=args.dtype)
        run_demo(model, prompt=args.prompt or DEFAULT_PROMPT, out=args.out, max_new_tokens=args.max_new_tokens)
    elif args.command == "convert":
        path = jaxinterp.convert(args.src, args.dst, dtype=args.dtype)
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from jaxinterp.errors import JaxinterpError

    try:
        _run(args)
    except JaxinterpError as e:
        if args.debug:
            raise
        print(f"jaxinterp {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
