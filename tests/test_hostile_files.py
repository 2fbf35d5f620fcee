"""Special files and paths in checkpoint folders, converted directories and the cache.

Every file jaxinterp opens from a folder must be a regular file resolving inside that
folder (`converters/files.py`): FIFOs, devices, links out of the folder and index entries
with absolute or `../` paths are refused by name, in bounded time; the Hugging Face hub
layout (snapshot files linking into `blobs/`) still loads.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

import jaxinterp as ji
from jaxinterp.converters.files import JSON_LIMIT, read_json
from tests.hostile import one_clean_line, within


@pytest.fixture
def checkpoint(tmp_path, tiny_checkpoint):
    """A private copy of a tiny HF checkpoint directory (with a tokenizer-less folder)."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("smol")[0], folder)
    return folder


def _refused(path, *needles: str) -> str:
    """Loads `path` within 20 s; asserts a one-line CheckpointError holding every needle."""
    with within(20), pytest.raises(ji.CheckpointError) as error:
        ji.load(str(path), progress=False)
    message = str(error.value)
    one_clean_line(message)
    for needle in needles:
        assert needle in message, message
    return message


def test_a_fifo_as_config_json_is_refused_without_blocking(checkpoint):
    os.remove(checkpoint / "config.json")
    os.mkfifo(checkpoint / "config.json")
    _refused(checkpoint, "config.json", "expected a regular file, found a FIFO")


def test_a_weight_file_linked_to_a_device_is_refused(checkpoint):
    os.remove(checkpoint / "model.safetensors")
    os.symlink("/dev/zero", checkpoint / "model.safetensors")
    _refused(checkpoint, "model.safetensors", "outside the folder")


def test_a_fifo_weight_file_named_directly_is_refused(checkpoint):
    os.remove(checkpoint / "model.safetensors")
    os.mkfifo(checkpoint / "model.safetensors")
    _refused(checkpoint / "model.safetensors", "model.safetensors", "FIFO")


def test_a_config_linked_out_of_the_folder_is_refused(checkpoint, tmp_path):
    outside = tmp_path / "elsewhere.json"
    shutil.move(checkpoint / "config.json", outside)
    os.symlink(outside, checkpoint / "config.json")
    _refused(checkpoint, "config.json", "outside the folder")


@pytest.mark.parametrize("entry", ["../model.safetensors", "/etc/passwd", "sub/../../x.safetensors", ""])
def test_index_entries_may_not_leave_the_folder(checkpoint, entry):
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": entry}}))
    _refused(checkpoint, "model.safetensors.index.json", "no absolute or '..' path")


def test_an_oversized_config_is_refused_before_reading(checkpoint):
    with open(checkpoint / "config.json", "wb") as f:
        f.truncate(JSON_LIMIT + 1)  # sparse: costs no disk
    _refused(checkpoint, "config.json", f"expected at most {JSON_LIMIT} bytes")


def test_a_fifo_tokenizer_file_is_refused(checkpoint):
    os.mkfifo(checkpoint / "tokenizer.json")
    _refused(checkpoint, "tokenizer.json", "FIFO")


def test_the_hugging_face_hub_layout_still_loads(checkpoint, tmp_path):
    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / "abc123"
    os.makedirs(repo / "blobs")
    os.makedirs(snapshot)
    for name in os.listdir(checkpoint):
        shutil.move(checkpoint / name, repo / "blobs" / name)
        os.symlink(os.path.join("..", "..", "blobs", name), snapshot / name)
    with within(60):
        model = ji.load(str(snapshot), progress=False)
    assert model.config.num_layers == 2


def test_converted_directories_refuse_special_files(checkpoint, tmp_path):
    converted = tmp_path / "converted"
    ji.convert(str(checkpoint), str(converted), progress=False)
    params = converted / "params"
    victim = next(os.path.join(d, f) for d, _, files in os.walk(params) for f in files)
    os.remove(victim)
    os.symlink("/dev/zero", victim)
    _refused(converted, os.path.basename(victim), "outside the folder")
    os.remove(converted / "jaxinterp.json")
    os.mkfifo(converted / "jaxinterp.json")
    with within(10), pytest.raises(ji.CheckpointError, match="FIFO"):
        read_json(converted / "jaxinterp.json", folder=converted)


def test_a_fifo_in_the_cache_memo_is_ignored(tmp_path, monkeypatch):
    from jaxinterp import cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    os.makedirs(cache.cache_root())
    os.mkfifo(os.path.join(cache.cache_root(), "hashes.json"))
    source = tmp_path / "source.bin"
    source.write_bytes(b"abc")
    with within(10):
        digest = cache.file_hash(str(source))
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
