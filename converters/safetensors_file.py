"""A validating, memory-mapped reader of `.safetensors` files.

The header is checked in full before any tensor is touched: its length must fit the file,
it must be a JSON object without repeated names, every tensor needs a known dtype, a shape
of non-negative integers and a data range inside the file whose size equals shape x
itemsize, and the ranges must tile the data exactly (no overlap, no gap, nothing after the
last tensor), as the reference `safetensors` reader requires. Names must be printable and
found values are escaped and shortened in messages, so an error cannot drive a terminal. No size read from the file is allocated before it
has been checked against the file's own size. Tensors are then read one at a time into their own
buffers (`get`), so a converter never holds a second copy of the checkpoint; a sharded load instead
takes a `lazy` view (a memory map of one tensor) and copies out only its devices' slices.
"""

from __future__ import annotations

import json
import math
import os
import struct

import ml_dtypes
import numpy as np

from jaxinterp.errors import CheckpointError, shown

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


class _Repeated(Exception):
    """A name that appears twice in one JSON object."""


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """`json` object hook: a dict, refusing repeated keys (which JSON readers resolve differently)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        names = [name for name, _ in pairs]
        raise _Repeated(next(name for name in names if names.count(name) > 1))
    return found


class SafetensorsFile:
    """Tensors of one `.safetensors` file: `names`, `shape(name)`, `get(name)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._entries, self._data_start = self._read_header()

    def _fail(self, field: str, message: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {field}: {shown(message, 500)}")

    def _read_header(self) -> tuple[dict[str, dict], int]:
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise self._fail("header length", f"expected 8 bytes, the file has {len(prefix)}")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(size - 8, MAX_HEADER_BYTES):
                raise self._fail("header length", f"{length} bytes does not fit a file of {size} bytes")
            raw = f.read(length)
        try:
            header = json.loads(raw, object_pairs_hook=_unique)
        except _Repeated as e:
            raise self._fail(f"tensor {shown(str(e))}", "appears twice in the header") from None
        except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: bad JSON or a 5000-digit number
            raise self._fail("header", f"expected JSON, found undecodable bytes ({type(e).__name__}: {shown(str(e))})") from None
        if not isinstance(header, dict):
            raise self._fail("header", f"expected a JSON object, found {type(header).__name__}")
        header.pop("__metadata__", None)
        data_size = size - 8 - length
        entries = {name: self._check_entry(name, entry, data_size) for name, entry in header.items()}
        position, previous = 0, "the start of the data"
        for begin, end, name in sorted((e["begin"], e["end"], name) for name, e in entries.items()):
            if begin != position:
                relation = f"overlaps {previous}" if begin < position else f"leaves a gap after {previous}"
                raise self._fail(f"tensor {name}", f"data_offsets: expected to begin at byte {position}, found {begin} "
                                                   f"(the range {relation})")
            position, previous = end, f"tensor {name}"
        if position != data_size:
            raise self._fail("data", f"expected {position} bytes after the header (the tensors' ranges), "
                                     f"found {data_size} (truncated or padded file?)")
        return entries, 8 + length

    def _check_entry(self, name: str, entry: object, data_size: int) -> dict:
        if not name.isprintable():
            raise self._fail("tensor name", f"expected printable text, found {name!r}")
        field = f"tensor {name}"
        if not isinstance(entry, dict):
            raise self._fail(field, f"expected an object, found {type(entry).__name__}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise self._fail(field, f"dtype: expected one of {sorted(DTYPES)}, found {dtype!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise self._fail(field, f"shape: expected a list of non-negative integers, found {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise self._fail(field, f"data_offsets: expected [begin, end], found {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise self._fail(
                field, f"data_offsets [{begin}, {end}] lie outside the {data_size} data bytes (truncated file?)"
            )
        expected = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
        if end - begin != expected:
            raise self._fail(field, f"expected {expected} bytes for shape {shape} {dtype}, found {end - begin}")
        return {"dtype": DTYPES[dtype], "shape": tuple(shape), "begin": begin, "end": end}

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name]["shape"]

    def get(self, name: str) -> np.ndarray:
        """One tensor, read into its own buffer.

        A read rather than a memory map: the pages of a map stay resident (and count in the
        process's memory) after the converter is done with them, so a mapped load peaks at the
        file's size on top of the converted parameters; a read holds one tensor at a time.
        """
        entry = self._entries[name]
        size = entry["end"] - entry["begin"]
        raw = np.empty(size, np.uint8)
        view, got = memoryview(raw), 0
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self._data_start + entry["begin"])
            while got < size:  # one read returns at most ~2 GiB on Linux
                step = f.readinto(view[got:])
                if not step:
                    break
                got += step
        if got != size:  # the file shrank after its header was checked
            raise self._fail(f"tensor {name}", f"data ends {size - got} bytes early: the file was truncated while open")
        return raw.view(entry["dtype"]).reshape(entry["shape"])

    def lazy(self, name: str) -> np.ndarray | None:
        """A read-only memory map of one tensor: indexing it reads only the pages of the slice
        (a process copies out its devices' shards and drops the map). None for an empty tensor."""
        entry = self._entries[name]
        if entry["end"] == entry["begin"]:
            return None
        return np.memmap(self.path, dtype=entry["dtype"], mode="r", offset=self._data_start + entry["begin"],
                         shape=entry["shape"])
