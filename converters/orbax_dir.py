"""The converted-model directory: an orbax checkpoint plus config, tokenizer and provenance.

Layout of a directory written by `jaxinterp convert` (and of each cache entry):

    DST/jaxinterp.json   {"format": 1, "family": ..., "config": {...}, "dtype": ..., "source": ...,
                          "source_hash": ..., "library_version": ...}
    DST/params/          orbax checkpoint of the parameter pytree
    DST/tokenizer/       transformers tokenizer files (absent if the checkpoint had none)

A directory is written under a temporary name beside DST (`.DST.partial-*`), flushed to
disk, and renamed into place only when complete, so a killed process, a power cut or an
error leaves nothing at DST; the manifest is the last file written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import jax

from jaxinterp.converters.files import check_tree, read_json
from jaxinterp.errors import CheckpointError, shown

FORMAT = 1
MANIFEST = "jaxinterp.json"
DTYPES = ("float32", "bfloat16", "float16", "float64")  # parameter dtypes a converted directory may hold


def is_converted(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory written by `save`."""
    return os.path.isfile(os.path.join(path, MANIFEST))


def save(dst: str | os.PathLike, params: Mapping[str, Any], manifest: Mapping[str, Any], tokenizer: Any = None) -> None:
    """Writes params, manifest and tokenizer to `dst` atomically (fails if `dst` exists)."""
    import orbax.checkpoint as ocp

    dst = os.path.abspath(os.fspath(dst))
    if os.path.exists(dst):
        raise CheckpointError(f"{dst}: already exists; choose a new destination or remove it")
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=partial_prefix(dst), dir=parent)
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.join(staging, "params"), params)
        checkpointer.wait_until_finished()
        if tokenizer is not None:
            tokenizer.save_pretrained(os.path.join(staging, "tokenizer"))
        with open(os.path.join(staging, MANIFEST), "w") as f:
            json.dump({"format": FORMAT, **manifest}, f, indent=2)
        _flush(staging)
        os.rename(staging, dst)
        _fsync(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def partial_prefix(dst: str | os.PathLike) -> str:
    """Name prefix of the staging directories of `dst` (left behind only by a killed writer)."""
    return f".{os.path.basename(os.path.abspath(dst))}.partial-"


def _flush(tree: str) -> None:
    """fsyncs every file and directory under `tree`, so a rename cannot outlive the data it names."""
    for folder, _, files in os.walk(tree, topdown=False):
        for name in files:
            _fsync(os.path.join(folder, name))
        _fsync(folder)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a converted directory, checked for format and the fields a restore reads first."""
    manifest_path = os.path.join(path, MANIFEST)
    manifest = read_json(manifest_path, folder=path)
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{manifest_path}: format: expected {FORMAT}, found {shown(repr(manifest.get('format')))}")
    for key, expected in (("family", str), ("config", dict)):
        if not isinstance(manifest.get(key), expected):
            raise CheckpointError(f"{manifest_path}: {key}: expected a {expected.__name__}, "
                                  f"found {shown(repr(manifest.get(key)))}")
    if manifest.get("dtype") not in DTYPES:
        raise CheckpointError(f"{manifest_path}: dtype: expected one of {DTYPES}, found {shown(repr(manifest.get('dtype')))}")
    return manifest


def restore(path: str | os.PathLike, abstract: Mapping[str, Any]) -> dict[str, Any]:
    """Restores the params of a converted directory into the shapes/dtypes of `abstract`."""
    import orbax.checkpoint as ocp

    params_path = os.path.join(os.path.abspath(path), "params")
    check_tree(params_path)
    try:
        params = ocp.StandardCheckpointer().restore(params_path, abstract)
    except Exception as e:
        raise CheckpointError(f"{params_path}: cannot restore ({type(e).__name__}: {shown(str(e), 300)})") from None
    found = jax.tree.map(lambda x: (x.shape, x.dtype), params)
    want = jax.tree.map(lambda x: (x.shape, x.dtype), abstract)
    if found != want:
        raise CheckpointError(f"{params_path}: parameters do not match the saved config")
    return params


def tokenizer_dir(path: str | os.PathLike) -> str | None:
    """The tokenizer folder of a converted directory, if it has one."""
    folder = os.path.join(path, "tokenizer")
    return folder if os.path.isdir(folder) else None
