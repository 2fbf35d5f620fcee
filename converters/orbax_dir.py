"""The converted-model directory: an orbax checkpoint plus config, tokenizer and provenance.

Layout of a directory written by `jaxinterp convert` (and of each cache entry):

    DST/jaxinterp.json   {"format": 2, "family": ..., "config": {...}, "dtype": ..., "source": ...,
                          "source_hash": ..., "library_version": ..., "digests": {params file: {bytes, crc32}}}
    DST/params/          orbax checkpoint of the parameter pytree
    DST/tokenizer/       transformers tokenizer files (absent if the checkpoint had none)

`writing(DST)` checks the destination before any work is done (it must not exist, its
folder must be writable, no other process may be writing it), removes staging directories
that killed writers of DST left, and yields a fresh staging directory beside DST
(`.DST.partial-*`, with the user's umask) that is flushed to disk and renamed into place
only when the block completes, so a killed process, a power cut or an error leaves nothing
at DST. `write` fills it; the manifest, with the digests of the parameter files, is its last file.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import jax

from jaxinterp.converters import digests
from jaxinterp.converters.files import check_tree, read_json
from jaxinterp.errors import CheckpointError, shown

FORMAT = 2
FORMATS = (1, 2)  # format 1 directories have no digests and load only with verify=False
MANIFEST = "jaxinterp.json"
DTYPES = ("float32", "bfloat16", "float16", "float64")  # parameter dtypes a converted directory may hold


def is_converted(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory written by `write`."""
    return os.path.isfile(os.path.join(path, MANIFEST))


@contextlib.contextmanager
def writing(dst: str | os.PathLike) -> Iterator[str]:
    """A staging directory that becomes `dst` when the block completes (see the module docstring)."""
    dst = os.path.abspath(os.fspath(dst))
    shown_dst = shown(dst, 300)
    if os.path.lexists(dst):
        raise CheckpointError(f"{shown_dst}: already exists; choose a new destination or remove it")
    parent = os.path.dirname(dst)
    try:
        os.makedirs(parent, exist_ok=True)
        lock = open(os.path.join(parent, f".{os.path.basename(dst)}.convert.lock"), "w")
    except OSError as e:
        raise CheckpointError(f"{shown_dst}: cannot write there ({shown(e.strerror or str(e))}: "
                              f"{shown(e.filename or parent, 300)})") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(f"{shown_dst}: another process is writing it now; wait for it to finish "
                                  "or choose another destination") from None
        for stale in glob.glob(os.path.join(parent, glob.escape(partial_prefix(dst)) + "*")):
            shutil.rmtree(stale, ignore_errors=True)  # no live writer holds the lock: these are a killed one's
        staging = tempfile.mkdtemp(prefix=partial_prefix(dst), dir=parent)
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(staging, 0o777 & ~mask)  # mkdtemp makes 0700: a colleague could not read the result
            yield staging
            _flush(staging)
            try:
                os.rename(staging, dst)
            except OSError:
                raise CheckpointError(f"{shown_dst}: written by another process meanwhile; "
                                      "this conversion was discarded") from None
            _fsync(parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            os.remove(lock.name)


def write(staging: str, params: Mapping[str, Any], manifest: Mapping[str, Any], tokenizer: Any = None) -> None:
    """Writes params, tokenizer and, last, the manifest with the digests of the parameter files into `staging`."""
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(staging, "params"), params)
    checkpointer.wait_until_finished()
    if tokenizer is not None:
        tokenizer.save_pretrained(os.path.join(staging, "tokenizer"))
    recorded = digests.record(os.path.join(staging, "params"))
    with open(os.path.join(staging, MANIFEST), "w") as f:
        json.dump({"format": FORMAT, **manifest, "digests": recorded}, f, indent=2)


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
    if manifest.get("format") not in FORMATS:
        raise CheckpointError(f"{manifest_path}: format: expected one of {FORMATS}, "
                              f"found {shown(repr(manifest.get('format')))}")
    for key, expected in (("family", str), ("config", dict)):
        if not isinstance(manifest.get(key), expected):
            raise CheckpointError(f"{manifest_path}: {key}: expected a {expected.__name__}, "
                                  f"found {shown(repr(manifest.get(key)))}")
    if manifest.get("dtype") not in DTYPES:
        raise CheckpointError(f"{manifest_path}: dtype: expected one of {DTYPES}, found {shown(repr(manifest.get('dtype')))}")
    return manifest


def verify(path: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Raises CheckpointError naming the first parameter file of `path` that its manifest's digests do not vouch for."""
    manifest_path = os.path.join(path, MANIFEST)
    if manifest.get("format") == 1:
        raise CheckpointError(f"{manifest_path}: format 1 (written before content digests): convert it again, "
                              "or load it with verify=False")
    digests.check(os.path.join(path, "params"), manifest.get("digests"), manifest=manifest_path)


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
