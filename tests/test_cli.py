"""The `jaxinterp` command line: the main job and conversion."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxinterp.cli import main


def test_demo_writes_figure_and_json(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--max-new-tokens", "12"]) == 0
    printed = capsys.readouterr().out
    assert "Paris" in printed
    result = json.loads((tmp_path / "demo.json").read_text())
    entropy = np.array(result["entropy"])
    assert entropy.shape == (30, 9)
    assert 0.0 <= entropy.min() and entropy.max() <= 1.0 and entropy.std() > 0.05
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_convert_command_and_one_line_errors(tiny_checkpoint, tmp_path, capsys):
    folder, _ = tiny_checkpoint("smol")
    assert main(["convert", folder, str(tmp_path / "out")]) == 0
    assert os.path.exists(tmp_path / "out" / "jaxinterp.json")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out2")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "no such file or directory" in error


@pytest.mark.parametrize("command", ["demo", "convert"])
def test_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "example: jaxinterp" in capsys.readouterr().out
