"""The one door through which jaxinterp opens files from checkpoints, converted directories and the cache.

A file named by a folder (a checkpoint's `config.json`, a shard listed in an index, a
tokenizer file, a converted directory's manifest and parameters) must be a regular file
that resolves inside that folder: a FIFO, a device, a socket, a symlink out of the folder,
or an index entry with an absolute or `../` path is refused with a `CheckpointError`
naming the file, before anything opens it (opening a FIFO blocks; reading a device never
ends). The one exception is the Hugging Face hub cache, whose `snapshots/<revision>/`
files are symlinks into the repository's `blobs/`: there the repository folder
(`models--org--name`) is the root. A file the user names directly may live anywhere, but
must still be regular. Small files are read whole with a bound derived from what they must
hold, so a config that claims to be a few kilobytes cannot fill memory.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from jaxinterp.errors import CheckpointError, shown

# Bounds on files read whole: generous for real checkpoints, far below what a host can hold.
JSON_LIMIT = 16 << 20  # config.json, tokenizer_config.json, manifests, preprocessor configs
INDEX_LIMIT = 64 << 20  # a sharded checkpoint's index: one line per tensor
TOKENIZER_LIMIT = 512 << 20  # tokenizer.json / tokenizer.model of the largest vocabularies


def root_of(folder: str | os.PathLike) -> str:
    """The real folder files named from `folder` must resolve into (the hub repository for a snapshot)."""
    real = os.path.realpath(folder)
    parent = os.path.dirname(real)
    if os.path.basename(parent) == "snapshots" and os.path.isdir(os.path.join(os.path.dirname(parent), "blobs")):
        return os.path.dirname(parent)
    return real


def member(folder: str | os.PathLike, name: Any, *, listed_in: str) -> str:
    """The path of `name`, an entry of `listed_in` (an index file), inside `folder`: a printable
    relative path that stays inside it (no absolute path, no `..`)."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise CheckpointError(f"{shown(listed_in, 300)}: entry {shown(repr(name))}: expected a file name inside "
                              f"{shown(os.fspath(folder), 300)} (no absolute or '..' path)")
    if not name.isprintable():  # the name reaches messages as part of a path
        raise CheckpointError(f"{shown(listed_in, 300)}: entry {shown(repr(name))}: expected a printable file name")
    return os.path.join(folder, name)


def regular_file(path: str | os.PathLike, *, folder: str | os.PathLike | None = None, limit: int | None = None) -> str:
    """`path` after checking that it exists, is a regular file no larger than `limit` bytes, and
    (when `folder` is given) resolves inside `folder`; raises CheckpointError naming it otherwise."""
    path = os.fspath(path)
    real = _inside(path, folder) if folder is not None else os.path.realpath(path)
    try:
        info = os.stat(real)
    except FileNotFoundError:
        raise CheckpointError(f"{shown(path, 300)}: missing") from None
    except OSError as e:
        raise CheckpointError(f"{shown(path, 300)}: cannot be read ({type(e).__name__}: {shown(str(e))})") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{shown(path, 300)}: refused: expected a regular file, found {_kind(info.st_mode)}")
    if limit is not None and info.st_size > limit:
        raise CheckpointError(f"{shown(path, 300)}: expected at most {limit} bytes, found {info.st_size}")
    return path


def read_bytes(path: str | os.PathLike, limit: int, *, folder: str | os.PathLike | None = None) -> bytes:
    """The contents of a checked regular file (see `regular_file`), reading at most `limit` bytes."""
    path = regular_file(path, folder=folder, limit=limit)
    # O_NONBLOCK: should the file have been swapped for a FIFO since it was checked, opening does not block
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"{shown(path, 300)}: refused: changed into {_kind(os.fstat(fd).st_mode)} while opened")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise CheckpointError(f"{shown(path, 300)}: expected at most {limit} bytes, found more (grew while read)")
    return data


def read_json(path: str | os.PathLike, *, folder: str | os.PathLike | None = None, limit: int = JSON_LIMIT,
              what: str = "") -> dict[str, Any]:
    """A JSON object from a checked file; `what` says why the file is needed when it is missing."""
    path = os.fspath(path)
    if what and not os.path.lexists(path):
        raise CheckpointError(f"{shown(path, 300)}: missing ({what})")
    raw = read_bytes(path, limit, folder=folder)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: bad JSON, a 5000-digit number
        raise CheckpointError(f"{shown(path, 300)}: unreadable: not valid JSON ({type(e).__name__}: {shown(str(e))})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{shown(path, 300)}: expected a JSON object, found {type(data).__name__}")
    return data


def check_tree(folder: str | os.PathLike, *, limit: int | None = None) -> None:
    """Every entry under `folder` is a directory or a regular file resolving inside it (at most
    `limit` bytes each), so a library that reads the tree (orbax, transformers) meets nothing else."""
    for parent, dirs, files in os.walk(folder):
        for name in dirs:  # os.walk does not descend into links to folders; one out of `folder` is refused
            _inside(os.path.join(parent, name), folder)
        for name in files:
            regular_file(os.path.join(parent, name), folder=folder, limit=limit)


def _inside(path: str, folder: str | os.PathLike) -> str:
    """The real path of `path`, which must lie inside `folder` (see `root_of`)."""
    real, root = os.path.realpath(path), root_of(folder)
    if os.path.commonpath([root, real]) != root:
        raise CheckpointError(f"{shown(path, 300)}: refused: it resolves to {shown(real, 300)}, outside "
                              f"the folder {shown(os.fspath(folder), 300)} it was named from")
    return real


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"
