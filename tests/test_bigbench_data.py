"""BIG-bench task loading: extraction, caching and errors on a fake source tree, and the real
download through pip (skipped, with the reason printed, when the package registry cannot serve
the release)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from jaxinterp.data import bigbench
from jaxinterp.errors import ArgumentError


def write_task(folder, examples, **extra):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "task.json"), "w") as f:
        json.dump({"name": os.path.basename(folder), "description": "d", "keywords": ["k"], "examples": examples, **extra}, f)


@pytest.fixture
def fake_source(tmp_path, monkeypatch):
    """A benchmark_tasks tree served instead of pip, counting downloads, with the cache in tmp."""
    tree = tmp_path / "source" / "bigbench" / "benchmark_tasks"
    write_task(tree / "yes_no", [
        {"input": "Is it?", "target_scores": {"yes": 1, "no": 0}},
        {"input": "Is it not?", "target_scores": {"yes": 0, "no": 1}},
        {"input": "Maybe?", "target_scores": {"yes": 1, "no": 0}},
    ])
    write_task(tree / "free_text", [{"input": "2+2=", "target": ["4", "four"]}, {"input": "1+1=", "target": "2"}])
    write_task(tree / "family", [], )
    write_task(tree / "family" / "child", [{"input": "a", "target_scores": {"x": 1, "y": 0}}])
    os.makedirs(tree / "programmatic")
    (tree / "programmatic" / "task.py").write_text("# a programmatic task\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(bigbench, "_download", lambda work: calls.append(work) or str(tree))
    return calls


def test_tasks_are_extracted_once_and_read_back(fake_source):
    task = bigbench.load_task("yes_no")
    texts, labels, classes = task.classification()
    assert texts == ["Is it?", "Is it not?", "Maybe?"] and classes == ("no", "yes")
    np.testing.assert_array_equal(labels, [1, 0, 1])
    free = bigbench.load_task("free_text")
    assert free.examples[0].target == ("4", "four") and free.examples[1].target == ("2",)
    assert bigbench.load_task("family/child").examples[0].target_scores == {"x": 1, "y": 0}
    assert len(fake_source) == 3
    bigbench.load_task("yes_no")
    assert len(fake_source) == 3  # cached: no new download
    assert sorted(os.listdir(bigbench.cache_dir())) == ["family", "free_text", "yes_no"]  # no staging left


def test_errors_name_the_task(fake_source):
    with pytest.raises(ArgumentError, match="'yes_noo': not in bigbench==1.0.0; did you mean yes_no"):
        bigbench.load_task("yes_noo")
    with pytest.raises(ArgumentError, match="programmatic task"):
        bigbench.load_task("programmatic")
    with pytest.raises(ArgumentError, match="load one of its subtasks: family/child"):
        bigbench.load_task("family")
    with pytest.raises(ArgumentError, match="no such subtask of 'family'; known: family/child"):
        bigbench.load_task("family/nephew")
    with pytest.raises(ArgumentError, match="expected multiple-choice examples"):
        bigbench.load_task("free_text").classification()
    with pytest.raises(ArgumentError, match="expected a BIG-bench task name"):
        bigbench.load_task("../etc")


def registry_lacks(requirement: str) -> str | None:
    """Why the configured package registry cannot serve `requirement` (None when it can): asks pip
    itself, so a mirror that lacks the release skips the test as surely as no network does."""
    name, version = requirement.split("==")
    try:
        answer = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name],
                                capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return f"the package registry did not answer `pip index versions {name}` in 120 s"
    offered = re.search(r"Available versions: (.*)", answer.stdout)
    if answer.returncode != 0 or offered is None:
        tail = " ".join((answer.stdout + answer.stderr).strip().splitlines()[-2:])
        return f"the package registry cannot be asked for {name}: {tail}"
    versions = [v.strip() for v in offered.group(1).split(",")]
    return None if version in versions else f"the package registry offers {name} {', '.join(versions)}, not {version}"


@pytest.mark.network
def test_real_task_through_pip(tmp_path, monkeypatch):
    reason = registry_lacks(bigbench.REQUIREMENT)
    if reason:
        print(f"skipping the BIG-bench download test: {reason}")
        pytest.skip(reason)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    texts, labels, classes = bigbench.load_task("sports_understanding").classification()
    assert classes == ("implausible", "plausible") and len(texts) == 1000
    assert np.bincount(labels).tolist() == [500, 500]
    assert texts[0] == "Jamal Murray was perfect from the line" and labels[0] == 1
