"""Content digests of a converted directory's parameter files, recorded when it is written and checked when it loads.

A flipped byte in an orbax parameter file (a bad disk, a careless copy, an edit) would
otherwise load as a model with different logits and no error. The manifest records, for
every file under `params/`, its size and CRC-32; `check` compares them
before anything reads the files, and refuses a file that is missing, extra, resized or
changed, naming it. CRC-32 detects accidental damage at a few percent of the load time
(SHA-256 costs about twice as much); it is no defence against someone who can rewrite
the manifest too, and no digest could be: the manifest lives beside the files it vouches for.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Mapping
from typing import Any

from jaxinterp.converters.files import member, regular_file
from jaxinterp.errors import CheckpointError, shown

CHUNK = 1 << 22


def record(folder: str) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes": size, "crc32": 8 hex digits}} of every file under `folder`."""
    return {name: {"bytes": os.path.getsize(os.path.join(folder, name)), "crc32": _crc32(os.path.join(folder, name))}
            for name in _files(folder)}


def check(folder: str, recorded: Any, *, manifest: str) -> None:
    """Raises CheckpointError naming the file unless the files under `folder` are those `recorded` in `manifest`."""
    if not isinstance(recorded, Mapping) or not recorded:
        raise CheckpointError(f"{manifest}: digests: expected an object of file digests, found {shown(repr(recorded))}")
    present = set(_files(folder))
    extra = sorted(present - set(recorded))
    if extra:
        raise CheckpointError(f"{shown(os.path.join(folder, extra[0]), 300)}: not listed in the digests of {manifest} "
                              "(the directory was changed after it was written)")
    for name, want in recorded.items():
        path = member(folder, name, listed_in=f"{manifest} digests")
        if not (isinstance(want, Mapping) and isinstance(want.get("bytes"), int)
                and re.fullmatch(r"[0-9a-f]{8}", str(want.get("crc32")))):
            raise CheckpointError(f"{manifest}: digests: {shown(repr(name))}: expected bytes and crc32, "
                                  f"found {shown(repr(want))}")
        regular_file(path, folder=folder)
        size = os.path.getsize(path)
        found = _crc32(path) if size == want["bytes"] else None
        if size != want["bytes"] or found != want["crc32"]:
            change = f"{want['bytes']} bytes, found {size}" if found is None else f"crc32 {want['crc32']}, found {found}"
            raise CheckpointError(f"{shown(path, 300)}: damaged: expected {change} (digest in {manifest}); remove the "
                                  "directory and convert again, or load with verify=False to accept it as it is")


def _files(folder: str) -> list[str]:
    """Relative paths (with '/') of the files under `folder`, sorted."""
    return sorted(os.path.relpath(os.path.join(parent, name), folder).replace(os.sep, "/")
                  for parent, _, names in os.walk(folder) for name in names)


def _crc32(path: str) -> str:
    value = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            value = zlib.crc32(chunk, value)
    return f"{value:08x}"
