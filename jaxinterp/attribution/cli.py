"""`jaxinterp attribute`: explain a model's answer to a prompt (and image), optionally as an HTML report.

    jaxinterp attribute --model smollm2 --prompt "What is the capital of France?" --method integrated_gradients \\
        --option steps=32 --html report.html
    jaxinterp attribute --model path/to/llava --image cat.png --prompt "What animal is this?" \\
        --method llava_cam --option samples=50 --html report.html

Without `--answer` the model answers first (greedy decoding, or LLaDA sampling for a
masked-diffusion model) and that answer is explained, teacher-forced.
"""

from __future__ import annotations

import argparse
import ast

import numpy as np

from jaxinterp.attribution.api import METHODS, attribute
from jaxinterp.attribution.request import Attribution
from jaxinterp.errors import ArgumentError

EXAMPLE = ("example: jaxinterp attribute --prompt 'What is the capital of France?' "
           "--method integrated_gradients --html report.html")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `attribute` subcommand's own arguments (the shared --model/--dtype/--seed come from the CLI)."""
    parser.add_argument("--prompt", required=True, help="the question (a user turn of the chat template)")
    parser.add_argument("--image", default=None, help="an image file for a vision-language model")
    parser.add_argument("--answer", default=None, help="the answer to explain (default: the model's own)")
    parser.add_argument("--method", default="llava_cam", choices=sorted(METHODS))
    parser.add_argument("--site", action="append", default=None, help="site glob(s) to attribute (repeatable)")
    parser.add_argument("--region", default=None, choices=["image", "tokens"], help="map image patches or tokens")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option, e.g. samples=50 or modules=('akd','cba') (Python literals)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="answer length when the model answers")
    parser.add_argument("--no-chat", action="store_true", help="use the prompt as is, without the chat template")
    parser.add_argument("--html", default=None, help="write a self-contained HTML report here")


def parse_options(pairs: list[str]) -> dict:
    """KEY=VALUE strings as a dict, values read as Python literals (plain strings otherwise)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ArgumentError(f"--option: expected KEY=VALUE, found {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def model_answer(model, prompt: str, images: list | None, *, chat: bool, max_new_tokens: int, seed: int) -> str:
    """The model's own answer: greedy decoding, or LLaDA sampling (one block) for a diffusion model."""
    from jaxinterp.diffusion import sample
    from jaxinterp.multimodal import encode

    batch = encode(model, prompt, images, chat=chat, padding="left")
    if model.next_token:
        return model.generate(batch, max_new_tokens, seed=seed).texts[0].strip()
    return sample(model, batch, gen_length=max_new_tokens, steps=max_new_tokens, block_length=max_new_tokens,
                  seed=seed).texts[0].strip()


def run_attribute(args: argparse.Namespace) -> Attribution:
    """Loads the model, answers (unless --answer), attributes, prints a summary and writes --html."""
    import PIL.Image

    import jaxinterp
    from jaxinterp.multimodal import encode
    from jaxinterp.viz.report import attribution_report

    model = jaxinterp.load(args.model, dtype=args.dtype)
    images = None if args.image is None else [PIL.Image.open(args.image)]
    chat = not args.no_chat
    answer = args.answer or model_answer(model, args.prompt, images, chat=chat, max_new_tokens=args.max_new_tokens,
                                         seed=args.seed)
    if not answer:
        raise ArgumentError("answer: the model's answer is empty; pass --answer to explain a given one")
    batch = encode(model, args.prompt, images, answers=answer, chat=chat)
    out = attribute(model, batch, method=args.method, site=args.site, region=args.region, **parse_options(args.option))
    print(f"{args.method}: answer {answer!r}, target score {float(np.asarray(out.values)[0]):.4g}, "
          f"sites {', '.join(out.sites) or '(none)'}")
    if args.html:
        notes = {"prompt": args.prompt, "answer": answer, "image": args.image or "(none)"}
        print(f"wrote {attribution_report(args.html, out, model, notes=notes)}")
    return out
