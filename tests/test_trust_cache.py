"""The conversion cache behind `load("smollm2")`: crash-safe, keyed by content and version, shared safely.

Most tests stand a tiny GGUF file in for the SmolLM2 wheel (`cache.builtin_source` is
patched, `XDG_CACHE_HOME` is a temporary directory), so a conversion takes about a second;
one test converts the real SmolLM2 from two processes at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys

import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import cache, loader
from jaxinterp.converters import orbax_dir
from tests import gguf_tiny, hf_tiny
from tests.isolated import ENV, finish, run_python, start_python

TOKENS = np.array([[1, 5, 9, 17, 33, 2]], np.int32)


@pytest.fixture
def tiny_builtin(tmp_path, monkeypatch, tiny_checkpoint):
    """`smollm2` served from a tiny GGUF file into a temporary cache; returns (source path, conversions list)."""
    _, model = tiny_checkpoint("smol")
    source = tmp_path / "tiny.gguf"
    gguf_tiny.write(model, str(source))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(cache, "builtin_source", lambda name: str(source))
    conversions = []
    real_convert = loader.convert

    def counting(*args, **kwargs):
        conversions.append(args[1])
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(loader, "convert", counting)
    return source, conversions


def _entries(root: str) -> list[str]:
    return sorted(name for name in os.listdir(root) if not name.endswith((".lock", ".json")))


def test_an_entry_records_its_source_hash_and_library_version(tiny_builtin):
    source, conversions = tiny_builtin
    model = ji.load("smollm2", progress=False)
    [entry] = conversions
    manifest = orbax_dir.read_manifest(entry)
    assert manifest["source_hash"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert manifest["library_version"] == cache.library_version() == ji.__version__
    assert cache.is_current(entry, manifest["source_hash"])
    np.testing.assert_array_equal(np.asarray(model(TOKENS)), np.asarray(ji.load(str(source), progress=False)(TOKENS)))
    ji.load("smollm2", progress=False)
    assert len(conversions) == 1  # restored, not converted again


def test_an_entry_is_rebuilt_when_its_manifest_or_the_version_or_the_source_changes(tiny_builtin, monkeypatch):
    source, conversions = tiny_builtin
    ji.load("smollm2", progress=False)
    [entry] = conversions
    manifest_path = os.path.join(entry, orbax_dir.MANIFEST)
    with open(manifest_path) as f:
        manifest = json.load(f)
    with open(manifest_path, "w") as f:  # an entry whose manifest names another source is never used
        json.dump({**manifest, "source_hash": "0" * 64}, f)
    ji.load("smollm2", progress=False)
    assert conversions == [entry, entry] and orbax_dir.read_manifest(entry)["source_hash"] == manifest["source_hash"]

    monkeypatch.setattr(cache, "library_version", lambda: "99.0")
    ji.load("smollm2", progress=False)
    assert conversions[-1].endswith("-99.0") and orbax_dir.read_manifest(conversions[-1])["library_version"] == "99.0"

    gguf_tiny.write(hf_tiny.build("smol", seed=1), str(source))  # new weights, same path
    ji.load("smollm2", progress=False)
    assert len(set(conversions)) == 3 and len(conversions) == 4
    assert orbax_dir.read_manifest(conversions[-1])["source_hash"] == hashlib.sha256(source.read_bytes()).hexdigest()


KILLED_WRITER = """
import os, sys, time
from jaxinterp import cache
cache.builtin_source = lambda name: {source!r}
real_rename = os.rename

def rename(src, dst, **kwargs):
    if os.path.basename(os.fspath(src)).startswith(".") and ".partial-" in os.fspath(src):
        print("renaming", flush=True)  # the staging directory is complete: the worst moment to die
        time.sleep(600)
    return real_rename(src, dst, **kwargs)

os.rename = rename
import jaxinterp as ji
ji.load("smollm2", progress=False)
"""


def _kill_during_conversion(source: str, root: str, moment: str) -> None:
    """Runs a conversion in a child and SIGKILLs it when a staging directory appears, or just before its rename."""
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER.format(source=source)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env={**ENV, "XDG_CACHE_HOME": os.path.dirname(root)}, text=True)
    try:
        for _ in range(12000):  # 120 s
            if moment == "staging" and os.path.isdir(root) and any(".partial-" in n for n in os.listdir(root)):
                break
            if moment == "rename" and select.select([child.stdout], [], [], 0.01)[0]:
                assert child.stdout.readline().strip() == "renaming"
                break
            assert child.poll() is None, "the conversion ended before it could be killed"
            select.select([], [], [], 0.01)
        else:
            raise AssertionError(f"no {moment} moment within 120 s")
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("moment", ["staging", "rename"])
def test_a_writer_killed_mid_write_never_leaves_an_entry_that_loads(tiny_builtin, moment):
    source, conversions = tiny_builtin
    root = cache.cache_root()
    _kill_during_conversion(str(source), root, moment)
    entry = cache.entry_path("smollm2", cache.file_hash(str(source)))
    left = _entries(root)
    assert left and all(".partial-" in name for name in left), left  # only a staging directory is left
    assert not os.path.exists(entry) and not cache.is_current(entry, cache.file_hash(str(source)))

    model = ji.load("smollm2", progress=False)  # converts again and sweeps the leftovers
    assert conversions == [entry] and _entries(root) == [os.path.basename(entry)]
    np.testing.assert_array_equal(np.asarray(model(TOKENS)), np.asarray(ji.load(str(source), progress=False)(TOKENS)))


CONCURRENT_LOAD = """
import numpy as np
import jaxinterp as ji
from jaxinterp import loader
real_convert = loader.convert

def convert(*args, **kwargs):
    print("converted", flush=True)
    return real_convert(*args, **kwargs)

loader.convert = convert
model = ji.load("smollm2", progress=False)
np.save({out!r}, np.asarray(model(np.array({tokens}, np.int32))))
"""


@pytest.mark.slow  # about 30 s on 2 cores
def test_two_processes_loading_smollm2_at_once_end_with_one_good_entry(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    children = [start_python(CONCURRENT_LOAD.format(out=str(tmp_path / f"{i}.npy"), tokens=TOKENS.tolist()), env=env)
                for i in range(2)]
    outputs = [finish(child, timeout=600) for child in children]
    assert sum(out.count("converted") for out in outputs) == 1
    root = os.path.join(tmp_path, "xdg", "jaxinterp")
    [entry] = _entries(root)
    source = cache.builtin_source("smollm2")
    assert cache.is_current(os.path.join(root, entry), cache.file_hash(source))
    np.testing.assert_array_equal(np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy"))
    run_python(f"""
        import numpy as np, jaxinterp as ji
        np.testing.assert_array_equal(np.asarray(ji.load("smollm2")(np.array({TOKENS.tolist()}, np.int32))),
                                      np.load({str(tmp_path / "0.npy")!r}))
    """, env=env)


def test_the_hash_memo_ignores_entries_that_are_not_digests(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    source = tmp_path / "weights"
    source.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert cache.file_hash(str(source)) == digest
    memo = os.path.join(cache.cache_root(), "hashes.json")
    with open(memo) as f:
        known = json.load(f)
    with open(memo, "w") as f:
        json.dump({key: "../../elsewhere" for key in known}, f)
    assert cache.file_hash(str(source)) == digest
    with open(memo, "w") as f:
        f.write("[1, 2]")
    assert cache.file_hash(str(source)) == digest
    source.write_bytes(b"other weights")  # same path, new contents
    assert cache.file_hash(str(source)) == hashlib.sha256(b"other weights").hexdigest()
