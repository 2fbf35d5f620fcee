"""BIG-bench JSON tasks (Srivastava et al., 2022) from the `bigbench==1.0.0` source archive on PyPI.

    task = load_task("sports_understanding")          # a subtask: "multiemo/reviews_sentence_en"
    texts, labels, classes = task.classification()    # for fixed-choice multiple-choice tasks

The first request for a task runs pip (the registry's ordinary client; no dataset hub is
contacted) and extracts only the requested tasks' `task.json` files into
`<cache_root()>/bigbench/<task>/` (a task with subtasks is extracted whole), each written under a temporary name and renamed into place
when complete; later calls read the cache and need no network.

How the archive is obtained: `pip download --no-deps bigbench==1.0.0` unpacks the source
distribution and then stops while preparing its metadata, because the package declares a
direct-URL dependency (`bleurt @ file://...`) that pip refuses for PyPI distributions. We run
pip with `--no-clean` and a private TMPDIR, so the unpacked tree stays readable (it does
whether or not pip gets past that check), and copy the task files from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable

import numpy as np
from tqdm.auto import tqdm

from jaxinterp.cache import cache_root
from jaxinterp.errors import ArgumentError, JaxinterpError

REQUIREMENT = "bigbench==1.0.0"


@dataclasses.dataclass(frozen=True)
class Example:
    """One example: the input text, the target string(s), and multiple-choice scores when given."""

    input: str
    target: tuple[str, ...] = ()
    target_scores: dict[str, float] | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    """A BIG-bench JSON task: its name, description, keywords, prompt prefix and examples."""

    name: str
    description: str
    keywords: tuple[str, ...]
    task_prefix: str
    examples: tuple[Example, ...]

    def classification(self) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
        """(texts, labels [N] int32, class names) for a task whose examples share one choice set.

        The label of an example is its highest-scoring choice; classes are the sorted choices.
        """
        choice_sets = {tuple(sorted(e.target_scores)) if e.target_scores else None for e in self.examples}
        if len(choice_sets) != 1 or None in choice_sets:
            raise ArgumentError(
                f"task {self.name!r}: expected multiple-choice examples sharing one set of choices, "
                f"found {len(choice_sets)} different choice sets"
            )
        classes = choice_sets.pop()
        labels = [classes.index(max(e.target_scores, key=e.target_scores.get)) for e in self.examples]
        return [e.input for e in self.examples], np.asarray(labels, np.int32), classes


def cache_dir() -> str:
    """Where extracted tasks live: `<cache_root()>/bigbench`."""
    return os.path.join(cache_root(), "bigbench")


def _top(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)?", name):
        raise ArgumentError(f"name: expected a BIG-bench task name such as 'navigate' or 'multiemo/all_text_en', found {name!r}")
    return name.split("/")[0]


def load_task(name: str) -> Task:
    """The BIG-bench JSON task `name` ("task" or "task/subtask"), downloading it on first use."""
    fetch([name])
    path = os.path.join(cache_dir(), name, "task.json")
    if not os.path.isfile(path):
        raise ArgumentError(f"task {name!r}: no such subtask of {_top(name)!r}; known: {_listing(subtasks(_top(name)))}")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not data.get("examples"):
        known = subtasks(name)
        raise ArgumentError(
            f"task {name!r}: has no examples of its own"
            + (f"; load one of its subtasks: {_listing(known)}" if known else "")
        )
    examples = tuple(
        Example(
            input=e["input"],
            target=tuple(e["target"]) if isinstance(e.get("target"), list) else (e["target"],) if "target" in e else (),
            target_scores=e.get("target_scores"),
        )
        for e in data["examples"]
    )
    return Task(
        name=name, description=data.get("description", ""), keywords=tuple(data.get("keywords", ())),
        task_prefix=data.get("task_prefix", ""), examples=examples,
    )


def subtasks(name: str) -> list[str]:
    """Names of the cached subtasks of top-level task `name`."""
    folder = os.path.join(cache_dir(), name)
    return sorted(f"{name}/{d}" for d in os.listdir(folder) if os.path.isfile(os.path.join(folder, d, "task.json")))


def _listing(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def fetch(names: Iterable[str]) -> None:
    """Makes sure every named task is in the cache, with one download for all that are missing."""
    missing = sorted({_top(n) for n in names if not os.path.isdir(os.path.join(cache_dir(), _top(n)))})
    if not missing:
        return
    os.makedirs(cache_dir(), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-") as work:
        tasks = _download(work)
        for top in missing:
            if not os.path.isdir(os.path.join(tasks, top)):
                close = difflib.get_close_matches(top, os.listdir(tasks), n=3)
                raise ArgumentError(f"task {top!r}: not in {REQUIREMENT}" + (f"; did you mean {', '.join(close)}?" if close else ""))
            if not glob.glob(os.path.join(tasks, top, "**", "task.json"), recursive=True):
                raise ArgumentError(f"task {top!r}: is a programmatic task (task.py); only JSON tasks can be loaded")
        for top in tqdm(missing, desc="extracting BIG-bench tasks", file=sys.stderr):
            staging = tempfile.mkdtemp(dir=cache_dir(), prefix=f".{top}-")
            for source in glob.glob(os.path.join(tasks, top, "**", "task.json"), recursive=True):
                target = os.path.join(staging, os.path.relpath(source, os.path.join(tasks, top)))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(source, target)
            os.chmod(staging, 0o755)
            try:
                os.rename(staging, os.path.join(cache_dir(), top))
            except OSError:  # another process finished the same task first
                shutil.rmtree(staging)


def _download(work: str) -> str:
    """Runs pip with TMPDIR=`work`; returns the unpacked `bigbench/benchmark_tasks` folder."""
    print(f"jaxinterp: downloading {REQUIREMENT} (source archive, once) with pip ...", file=sys.stderr)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-clean", "--progress-bar", "off",
         REQUIREMENT, "-d", os.path.join(work, "archive")],
        env={**os.environ, "TMPDIR": work}, capture_output=True, text=True,
    )
    trees = glob.glob(os.path.join(work, "pip-*", "bigbench*", "bigbench", "benchmark_tasks"))
    if not trees:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
        raise JaxinterpError(f"BIG-bench: `pip download {REQUIREMENT}` left no source tree (is PyPI reachable?):\n{tail}")
    return trees[0]
