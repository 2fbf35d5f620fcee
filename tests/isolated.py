"""Running jaxinterp in child processes, so a crash, a hang or a kill cannot take the test runner down.

`run_python` runs a script to completion (`start_python` and `finish`, for several at once); `LoaderWorker` keeps one child that loads file
after file (imports cost seconds, a load of a tiny model a fraction of one) and reports
each outcome, restarting the child after it dies or stops answering.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import textwrap

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "TOKENIZERS_PARALLELISM": "false"}


def start_python(script: str, *, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Starts `script` in a fresh interpreter (JAX on CPU), its output captured as text."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env={**ENV, **(env or {})},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(child: subprocess.Popen, *, timeout: float = 300, input: str | None = None) -> str:
    """Waits for a child of `start_python`, asserts that it succeeded, and returns its stdout."""
    try:
        out, err = child.communicate(input=input, timeout=timeout)
    finally:
        child.kill()
    assert child.returncode == 0, f"child exited {child.returncode}:\n{err[-4000:]}"
    return out


def run_python(script: str, *, env: dict[str, str] | None = None, timeout: float = 300, input: str | None = None) -> str:
    """Runs `script` to completion in a fresh interpreter; its stdout."""
    return finish(start_python(script, env=env), timeout=timeout, input=input)


WORKER = """
import hashlib, json, os, sys, traceback
answers = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)  # anything else printed goes to stderr
import jax, numpy as np
import jaxinterp as ji
{prelude}

def summary(model):
    leaves = jax.tree_util.tree_leaves_with_path(model.params)
    return {"outcome": "loaded", "config": repr(model.config),
            "params": {jax.tree_util.keystr(path): [list(x.shape), str(x.dtype),
                                                    hashlib.sha256(np.asarray(x).tobytes()).hexdigest()]
                       for path, x in leaves}}

print(json.dumps({"outcome": "ready"}), file=answers)
for line in sys.stdin:
    try:
        result = summary(ji.load(line.rstrip("\\n"), progress=False))
    except ji.JaxinterpError as e:
        result = {"outcome": "refused", "error": type(e).__name__, "message": str(e)}
    except BaseException as e:
        result = {"outcome": "crashed", "error": type(e).__name__, "message": traceback.format_exc()[-3000:]}
    print(json.dumps(result), file=answers)
"""


class LoaderWorker:
    """A child process that answers `load(path)` with what `jaxinterp.load` did (see WORKER)."""

    def __init__(self, timeout: float = 60.0, prelude: str = ""):
        """`prelude`: code the child runs after importing jaxinterp (as `ji`), e.g. to test the harness."""
        self.timeout, self.prelude = timeout, prelude
        self._child: subprocess.Popen | None = None
        self._stderr = tempfile.TemporaryFile()

    def _start(self) -> subprocess.Popen:
        if self._child is None:
            self._child = subprocess.Popen([sys.executable, "-c", WORKER.replace("{prelude}", self.prelude)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=self._stderr, env=ENV, text=True, bufsize=1)
            assert self._answer(timeout=300)["outcome"] == "ready", self._stderr_tail()
        return self._child

    def _answer(self, timeout: float) -> dict:
        ready, _, _ = select.select([self._child.stdout], [], [], timeout)
        line = self._child.stdout.readline() if ready else None
        if line:
            return json.loads(line)
        outcome = "hung" if line is None else "died"
        self.close()
        return {"outcome": outcome, "message": self._stderr_tail()}

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-3000:].decode(errors="replace")

    def load(self, path: str) -> dict:
        """{'outcome': 'loaded' (with 'config' and 'params': name -> [shape, dtype, sha256]), 'refused',
        'crashed' (another exception), 'died' (the process ended) or 'hung'} for `jaxinterp.load(path)`."""
        child = self._start()
        child.stdin.write(path + "\n")
        child.stdin.flush()
        return self._answer(self.timeout)

    def close(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            self._child = None
