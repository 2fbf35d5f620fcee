"""Bad arguments to every CLI subcommand: one line on stderr, a non-zero exit, no traceback without `--debug`.

Each probe runs `jaxinterp.cli.main` in-process (on a tiny model where it needs one) under
a time bound; argparse's usage errors, jaxinterp's errors, the system's refusals (`OSError`)
and any other exception all end as one printable line.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import pytest

import jaxinterp as ji
from jaxinterp import cli
from jaxinterp.data.vocab import word_tokenizer
from jaxinterp.models import init_params
from jaxinterp.models.llama import LlamaConfig
from tests.hostile import one_clean_line, within
from tests.isolated import ENV

TINY, FILE = "{tiny}", "{file}"  # placeholders: the tiny converted model, a regular file


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    """{placeholder: path}: a tiny random Llama with a word tokenizer, saved as a converted directory, and a file."""
    tokenizer = word_tokenizer("the cat sat on a mat and dog ran far".split())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                         num_kv_heads=1, head_dim=8, max_position_embeddings=64,
                         eos_token_ids=(tokenizer.eos_token_id,))
    folder = tmp_path_factory.mktemp("cli")
    (folder / "file").write_text("x")
    ji.save(ji.Model(config, init_params(config, jax.random.key(0)), tokenizer), folder / "tiny")
    return {TINY: str(folder / "tiny"), FILE: str(folder / "file")}


M = ["--model", TINY]
G = [*M, "--max-new-tokens", "4"]  # inside the tiny model's context, so each probe meets its own check
PROBES = {  # subcommand -> bad argument lists
    None: [[], ["nosuch"], ["--model"]],
    "demo": [["demo", "--model", "/nonexistent/model"], ["demo", "--max-new-tokens", "many"],
             ["demo", "--dtype", "float16"]],
    "convert": [["convert"], ["convert", "/nonexistent/ckpt", "/tmp/jaxinterp-never"],
                ["convert", TINY, FILE + "/under-a-file"], ["convert", TINY, TINY]],
    "generate": [["generate"], ["generate", "the", *G, "--edit", "no_such_edit"],
                 ["generate", "the", *G, "--edit", "scale_head", "layer=1", "head=99", "scale=0"],
                 ["generate", "the", *G, "--stop", ""], ["generate", "the", *G, "--top-k", "100000"],
                 ["generate", "the", *M, "--max-new-tokens", "x"]],
    "capture": [["capture", "the"], ["capture", "the", *M, "--sites", "no.such.*"],
                ["capture", "the", *M, "--sites", "embed", "--out", "/proc/jaxinterp-no/acts.safetensors"]],
    "sites": [["sites", "--model", "/nonexistent"], ["sites", "--model", FILE], ["sites", "--model", "\x1b[2J\x07evil"]],
    "attention": [["attention"], ["attention", "the cat", *M, "--out", FILE],
                  ["attention", "the", "--model", "bad\nname"]],
    "patch": [["patch", "--site", "nope"], ["patch", *M, "--clean", "the cat sat", "--corrupted", "the"],
              ["patch", "--model", "/nonexistent"]],
    "attribute": [["attribute"], ["attribute", "--prompt", "the", "--method", "nope"],
                  ["attribute", "--prompt", "the", *M, "--image", "/nonexistent.png"]],
    "experiment": [["experiment"], ["experiment", "no_such_experiment"], ["experiment", "../../etc/passwd"]],
    "data": [["data"], ["data", "nope", "x"], ["data", "bigbench"]],
    "plan": [["plan"], ["plan", "no-such-model"], ["plan", "llama-2-7b", "--mesh", "0x2"],
             ["plan", "llama-2-7b", "--strategy", "nope"]],
}
CASES = [(command, argv) for command, probes in PROBES.items() for argv in probes]


def test_every_subcommand_has_probes():
    assert set(PROBES) - {None} == set(cli.EXAMPLES)


@pytest.mark.parametrize("command, argv", CASES, ids=[" ".join(argv)[:60] or "(none)" for _, argv in CASES])
def test_a_bad_argument_ends_in_one_line_and_a_non_zero_exit(places, capsys, command, argv):
    argv = [places.get(arg, arg.replace(FILE, places[FILE])) for arg in argv]
    with within(60):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse's usage errors exit
            code = e.code
    err = capsys.readouterr().err.strip()
    assert code not in (0, None), f"{argv} succeeded"
    one_clean_line(err)
    assert "Traceback" not in err and err.startswith("jaxinterp"), err


def test_an_unexpected_exception_is_one_line_and_debug_shows_it(places, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_sites", lambda args: {}["\x1b[31m"])
    assert cli.main(["sites", "--model", places[TINY]]) == 2
    err = capsys.readouterr().err.strip()
    one_clean_line(err)
    assert "internal error (KeyError" in err and "--debug" in err
    with pytest.raises(KeyError):
        cli.main(["sites", "--model", places[TINY], "--debug"])


def test_the_installed_command_prints_no_traceback(tmp_path):
    with within(120):
        done = subprocess.run([sys.executable, "-m", "jaxinterp.cli", "convert", str(tmp_path / "missing"),
                               str(tmp_path / "out")], capture_output=True, text=True, env=ENV, timeout=110)
    assert done.returncode == 2
    one_clean_line(done.stderr.strip())
    assert str(tmp_path / "missing") in done.stderr and not os.path.exists(tmp_path / "out")
