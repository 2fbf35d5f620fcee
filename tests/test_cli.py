"""The `jaxinterp` command line: every subcommand's help and a minimal run on a tiny model."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.cli import EXAMPLES, main
from jaxinterp.data.vocab import word_tokenizer
from jaxinterp.models import init_params
from jaxinterp.models.llama import LlamaConfig


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama with a word tokenizer, saved as a converted directory."""
    tokenizer = word_tokenizer("the cat sat on a mat and dog ran far".split())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8, max_position_embeddings=256,
                         eos_token_ids=(tokenizer.eos_token_id,))
    model = ji.Model(config, init_params(config, jax.random.key(0)), tokenizer)
    return ji.save(model, tmp_path_factory.mktemp("cli") / "tiny")


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert f"example: {EXAMPLES[command]}" in capsys.readouterr().out


@pytest.mark.slow  # about 90 s; CI's first command runs the demo and checks demo.json and demo.png
def test_demo_writes_figure_and_json(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--max-new-tokens", "12"]) == 0
    assert "Paris" in capsys.readouterr().out
    result = json.loads((tmp_path / "demo.json").read_text())
    entropy = np.array(result["entropy"])
    assert entropy.shape == (30, 9)
    assert 0.0 <= entropy.min() and entropy.max() <= 1.0 and entropy.std() > 0.05
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_generate_capture_sites_attention(tiny_dir, tmp_path, capsys):
    model = ["--model", str(tiny_dir)]
    assert main(["generate", "the cat sat", "a dog ran", "--max-new-tokens", "4", "--edit", "scale_head", "layer=1",
                 "head=0", "scale=0", "--edit", "art", "layers=(0,)", "top_k_ratio=0.5",
                 "--out", str(tmp_path / "gen.json"), *model]) == 0
    generated = json.loads((tmp_path / "gen.json").read_text())
    assert len(generated["texts"]) == 2
    assert generated["edits"] == ["scale_head layer=1 head=0 scale=0", "art layers=(0,) top_k_ratio=0.5"]
    assert main(["capture", "the cat sat on a mat", "--sites", "blocks.*.attn.probs", "embed",
                 "--out", str(tmp_path / "acts.npz"), *model]) == 0
    with np.load(tmp_path / "acts.npz") as acts:
        assert sorted(acts.files) == ["blocks.0.attn.probs", "blocks.1.attn.probs", "embed"]
    assert main(["sites", *model]) == 0
    assert "blocks.1.attn.head_out" in capsys.readouterr().out
    assert main(["attention", "the cat sat on a mat", "--out", str(tmp_path / "att"), *model]) == 0
    attention = json.loads((tmp_path / "att" / "attention.json").read_text())
    assert np.shape(attention["entropy"]) == np.shape(attention["m_index"]) == (2, 4)
    assert np.min(attention["m_index"]) >= 1.0  # 1 = uniform; a head can only be more local
    assert (tmp_path / "att" / "entropy.png").exists() and (tmp_path / "att" / "m_index.png").exists()
    assert main(["attribute", "--prompt", "the cat sat", "--answer", "on a mat", "--no-chat", "--method",
                 "grad_x_input", "--html", str(tmp_path / "report.html"), "--out", str(tmp_path / "maps.npz"),
                 *model]) == 0
    with np.load(tmp_path / "maps.npz") as maps:
        assert maps["tokens"].shape[:2] == (1, 1) and list(maps["sites"]) == ["embed"]
        assert np.abs(maps["tokens"]).sum() > 0
    assert "on a mat" in (tmp_path / "report.html").read_text()


def test_convert_data_experiment_and_one_line_errors(tiny_checkpoint, tiny_dir, tmp_path, capsys):
    folder, _ = tiny_checkpoint("smol")
    assert main(["convert", folder, str(tmp_path / "out")]) == 0
    assert os.path.exists(tmp_path / "out" / "jaxinterp.json")
    assert main(["data", "reasoning-gym", "basic_arithmetic", "--size", "3", "--out", str(tmp_path / "g.jsonl")]) == 0
    assert len((tmp_path / "g.jsonl").read_text().splitlines()) == 3
    capsys.readouterr()
    failures = [
        ["convert", str(tmp_path / "nowhere"), str(tmp_path / "out2")],
        ["generate", "the cat", "--model", str(tiny_dir), "--edit", "no_such_edit"],
        ["generate", "the cat", "--model", str(tiny_dir), "--edit", "art", "top_k_ratio=1.5"],
        ["capture", "the cat", "--sites", "blocks.9.nothing", "--model", str(tiny_dir)],
        ["experiment", "no_such_experiment"],
    ]
    for argv in failures:
        assert main(argv) == 2
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and error.startswith(f"jaxinterp {argv[0]}: error:"), error


def test_named_method_edits_are_built_for_the_model(tiny_dir):
    from jaxinterp.edit_registry import make
    from jaxinterp.methods.art import art
    from jaxinterp.methods.evas import evas

    model = ji.load(tiny_dir)
    built = make("art", ["layers=(0, 1)", "top_k_ratio=0.5", "mode=mean"], model)
    assert built == art(model, layers=(0, 1), top_k_ratio=0.5, mode="mean") and int(built.heads) == 2
    assert make("evas", ["layers=(1,)", "beta=0.01", "span=question"], model) == evas(model, layers=(1,), beta=0.01,
                                                                                         span="question")
    with pytest.raises(ji.ArgumentError, match="built for a model"):
        make("art", ["layers=(0,)"])
