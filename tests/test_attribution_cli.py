"""The function behind `jaxinterp attribute`: a saved model, an image file, a report."""

from __future__ import annotations

import argparse

import numpy as np
import PIL.Image
import pytest

import jaxinterp as ji
from jaxinterp.attribution.cli import add_arguments, parse_options, run_attribute
from tests.attribution_tiny import vlm


def test_run_attribute_writes_a_report(tmp_path, capsys):
    folder = ji.save(vlm(), tmp_path / "model")
    image = tmp_path / "shapes.png"
    PIL.Image.fromarray((np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)).save(image)
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    add_arguments(parser)
    args = parser.parse_args(["--model", folder, "--image", str(image), "--prompt", "is there a red square ?",
                              "--method", "llava_cam", "--option", "samples=2", "--option", "threshold=None",
                              "--answer", "yes", "--html", str(tmp_path / "report.html")])
    out = run_attribute(args)
    assert out.image.shape == (2, 1, 1, 4, 4) and (tmp_path / "report.html").stat().st_size > 5000
    assert "target score" in capsys.readouterr().out
    assert parse_options(["modules=('akd','cba')", "site=blocks.1"]) == {"modules": ("akd", "cba"), "site": "blocks.1"}
    with pytest.raises(ji.ArgumentError, match="KEY=VALUE"):
        parse_options(["samples"])
