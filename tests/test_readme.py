"""The README's tour runs as written."""

from __future__ import annotations

import pathlib
import re


def test_tour_runs(smollm2, monkeypatch, capsys):
    import jaxinterp

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    tour = re.search(r"## Tour\n\n```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.setattr(jaxinterp, "load", lambda *a, **k: smollm2)  # the session's model, already loaded
    namespace = {}
    exec(compile(tour, "README.md#tour", "exec"), namespace)
    assert len(namespace["out"].texts) == 2
    assert "(1, 13, 49152) (1, 9, 13, 13)" in capsys.readouterr().out
