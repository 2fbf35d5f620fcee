"""HTML reports from untrusted text: every token and label escaped, nothing remote, written atomically.

A report is opened by people who did not make it; its tokens come from a model's
vocabulary and its labels from whoever ran the analysis. So a token `<script>...` must show
as text, the page must load nothing from the network, and a crash while writing must never
leave a half-written report behind.
"""

from __future__ import annotations

import html.parser
import os

import numpy as np
import pytest

import jaxinterp as ji

report = pytest.importorskip("jaxinterp.viz.report")
attribution = pytest.importorskip("jaxinterp.attribution")

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "</span><a href='https://evil.example/'>x</a>",
    "&lt;already escaped&gt;",
    "<style>@import url(https://evil.example/x.css)</style>",
    "<!-- comment -->",
    "plain",
    "<iframe src=//evil.example>",
]
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "table", "tr", "th", "td", "p", "img",
                "div", "span"}


class HostileTokenizer:
    """Decodes token id i to HOSTILE[i % len(HOSTILE)]."""

    pad_token_id = eos_token_id = None

    def decode(self, ids, **_):
        return "".join(HOSTILE[int(i) % len(HOSTILE)] for i in ids)


class Page(html.parser.HTMLParser):
    """Tags, attributes, text and style blocks of a page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.attributes, self.text, self.styles, self._in_style = [], [], [], [], False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += attrs
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        (self.styles if self._in_style else self.text).append(data)

    def handle_comment(self, data):
        self.tags.append("<!--")


@pytest.fixture(scope="module")
def written(tmp_path_factory, tiny_checkpoint):
    """(path, text) of a report whose tokens, title, model source and notes are all hostile."""
    folder, _ = tiny_checkpoint("smol")
    loaded = ji.load(folder, progress=False)
    model = ji.Model(loaded.config, loaded.params, HostileTokenizer(), source=HOSTILE[0])
    tokens = np.arange(len(HOSTILE))[None] + 1
    result = attribution.attribute(model, tokens, attribution.Tokens.at(len(HOSTILE) - 1), method="grad_x_input")
    path = tmp_path_factory.mktemp("report") / "report.html"
    report.attribution_report(path, result, model, title=HOSTILE[1], notes={HOSTILE[2]: HOSTILE[0]},
                              targets=[len(HOSTILE) - 1])
    return path, path.read_text(encoding="utf-8")


def test_tokens_and_labels_render_as_text(written):
    _, text = written
    page = Page(text)
    assert set(page.tags) <= ALLOWED_TAGS, set(page.tags) - ALLOWED_TAGS
    shown = "".join(page.text)
    for hostile in HOSTILE:
        assert hostile in shown, hostile  # the reader sees the characters, the browser runs nothing
    assert "<script" not in text.lower() and "<iframe" not in text.lower()


def test_nothing_is_loaded_from_elsewhere(written):
    _, text = written
    page = Page(text)
    for name, value in page.attributes:
        assert not name.startswith("on"), name  # no event handlers
        if name in ("src", "href", "srcset", "action", "data", "poster"):
            assert value.startswith("data:"), (name, value[:80])
    for style in page.styles:
        assert "url(" not in style and "@import" not in style
    # and the browser itself refuses scripts and remote loads
    assert ("content", "default-src 'none'; style-src 'unsafe-inline'; img-src data:") in page.attributes


def test_reports_are_written_atomically(written, tmp_path, monkeypatch):
    _, text = written
    path = tmp_path / "report.html"
    path.write_text("the previous report")
    seen = []
    real_replace = os.replace

    def replace(source, destination):  # the temporary file is complete before it takes the report's name
        seen.append(open(source, encoding="utf-8").read())
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        report.write_atomic(path, text)
    assert seen == [text]
    assert path.read_text() == "the previous report" and os.listdir(tmp_path) == ["report.html"]
    monkeypatch.setattr(os, "replace", real_replace)
    report.write_atomic(path, text)
    assert path.read_text(encoding="utf-8") == text and os.listdir(tmp_path) == ["report.html"]
