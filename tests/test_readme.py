"""The README's examples run as written."""

from __future__ import annotations

import pathlib
import re

import pytest

README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()


def _run_block(section: str, smollm2, monkeypatch) -> dict:
    """Executes the first python block of `## section` with the session's model as `load`'s answer."""
    import jaxinterp

    code = re.search(rf"## {section}\n.*?```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.setattr(jaxinterp, "load", lambda *a, **k: smollm2)  # the session's model, already loaded
    namespace = {}
    exec(compile(code, f"README.md#{section.lower()}", "exec"), namespace)
    return namespace


def test_tour_runs(smollm2, monkeypatch, capsys):
    namespace = _run_block("Tour", smollm2, monkeypatch)
    assert len(namespace["out"].texts) == 2
    assert "(1, 13, 49152) (1, 9, 13, 13)" in capsys.readouterr().out


def test_one_program_example_runs(smollm2, monkeypatch, capsys):
    _run_block("One program", smollm2, monkeypatch)
    assert "(1, 5, 49152) True" in capsys.readouterr().out


@pytest.mark.slow
def test_methods_example_runs(smollm2, monkeypatch, capsys):
    namespace = _run_block("Methods", smollm2, monkeypatch)
    assert "(30, 9)" in capsys.readouterr().out
    tokens = namespace["maps"].tokens
    assert tokens.shape[:2] == (1, 1) and float(abs(tokens).sum()) > 0
