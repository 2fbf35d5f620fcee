"""Attribution figures and the self-contained HTML report: inline images only, escaped text, atomic writes."""

from __future__ import annotations

import os
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest

from jaxinterp.attribution import Tokens, attribute
from jaxinterp.viz import attribution_report, image_overlay, layer_grid, token_strip
from jaxinterp.viz.report import strip_html, token_texts, write_atomic
from tests.attribution_tiny import GRID, image_batch, vlm


@pytest.fixture(scope="module")
def model():
    return vlm()


def test_figures_render(tmp_path):
    image = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    maps = np.random.default_rng(1).random((3, GRID, GRID))
    for fig, name in [(image_overlay(image, maps[0], title="one map"), "overlay.png"),
                      (layer_grid(image, maps, ["a", "b", "c"], title="layers", cols=2), "grid.png"),
                      (token_strip(["the", "capital", "<of>", "France"], [0.1, -0.4, 0.0, 0.9], title="t", highlight=3),
                       "strip.png")]:
        fig.savefig(tmp_path / name)
        plt.close(fig)
        assert (tmp_path / name).stat().st_size > 1000
    with pytest.raises(ValueError, match="one per token"):
        token_strip(["a"], [0.1, 0.2], title="t")


def test_report_is_self_contained_and_escaped(model, tmp_path):
    batch = image_batch(model)
    out = attribute(model, batch, method="llava_cam")
    path = tmp_path / "sub" / "report.html"
    attribution_report(path, out, model, notes={"question": "<script>alert(1)</script> & more"})
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in text
    assert "<script" not in text and not re.search(r"(src|href)=\"(?!data:)", text) and not re.search(r"https?://", text)
    assert text.count("data:image/png;base64,") == 2  # the chosen site's overlay and the every-site grid
    assert os.listdir(path.parent) == ["report.html"]  # no temporary file left behind
    tam = attribute(model, batch, Tokens.at(22), method="tam")
    attribution_report(path, tam, model, targets=[22])
    text = path.read_text()
    assert "\u27e8image \u00d716\u27e9" in text and 'class="tok target"' in text  # 16 placeholders fold into one chip
    assert all(f">{word}<" in text for word in token_texts(model.tokenizer, np.asarray(batch.tokens[0, :3])))


def test_token_strip_html_escapes_every_token():
    html = strip_html(["<b>", "a&b", '"q"'], np.array([0.0, 1.0, 0.5]), targets=[1])
    assert "&lt;b&gt;" in html and "a&amp;b" in html and "&quot;q&quot;" in html and "<b>" not in html


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    write_atomic(path, "old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["report.html"]
