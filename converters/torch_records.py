"""Checks that every tensor record of a torch zip checkpoint (`.bin`, `.pt`) holds the bytes its pickle claims.

torch's memory-mapped load slices each storage as `file[record offset : offset + nbytes]`
with `nbytes` taken from the pickle and never compared with the record's size, so a record
cut short is silently read past its end (into the next record, or the zip directory). Here
the pickle is scanned without running it (`pickletools` only decodes opcodes; a small stack
machine follows the values that persistent ids are built from), and each storage's byte
count is checked against the size of its `data/<key>` record in the zip directory (a
directory whose records reach past the file's end torch's own zip reader refuses).
"""

from __future__ import annotations

import pickletools
import zipfile

from jaxinterp.errors import CheckpointError, shown

PICKLE_LIMIT = 256 << 20  # data.pkl holds names and shapes only: a few MB for the largest models
_MARK = object()
# storage classes of the dtypes a checkpoint tensor may have (`sources.TORCH_DTYPES`), with bytes per element
ITEMSIZES = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
             "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
             "UntypedStorage": 1}


def check_records(path: str) -> None:
    """Raises CheckpointError naming `path` unless every storage of its pickle fits its record."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = {info.filename: info for info in archive.infolist()}
            pickles = [name for name in records if name.endswith("data.pkl") and name.count("/") == 1]
            if len(pickles) != 1:
                raise CheckpointError(f"{path}: expected one data.pkl record, found {len(pickles)}")
            if records[pickles[0]].file_size > PICKLE_LIMIT:
                raise CheckpointError(f"{path}: {pickles[0]}: expected at most {PICKLE_LIMIT} bytes, "
                                      f"found {records[pickles[0]].file_size}")
            storages = _storages(archive.read(pickles[0]))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, IndexError) as e:
        raise CheckpointError(f"{path}: unreadable torch archive ({type(e).__name__}: {shown(str(e))})") from None
    prefix = pickles[0][: -len("data.pkl")]
    for key, nbytes in storages.items():
        record = records.get(f"{prefix}data/{key}")
        if record is None:
            raise CheckpointError(f"{path}: storage {shown(repr(key))}: its record data/{shown(key)} is missing")
        if record.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{path}: record {shown(record.filename)}: expected stored (uncompressed), "
                                  f"found compression type {record.compress_type}")
        if nbytes > record.file_size:
            raise CheckpointError(f"{path}: record {shown(record.filename)}: the pickle needs {nbytes} bytes, "
                                  f"the record holds {record.file_size} (cut short)")


def _storages(data: bytes) -> dict[str, int]:
    """{record key: bytes the pickle reads from it}, from the persistent ids
    `('storage', torch.<Type>Storage, key, location, numel)` of a torch pickle, without running it."""
    stack: list = []
    memo: dict = {}
    needed: dict[str, int] = {}
    for op, arg, _ in pickletools.genops(data):
        if op.name == "MARK":
            stack.append(_MARK)
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif op.name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg))
        elif op.name == "STACK_GLOBAL":
            name, module = stack.pop(), stack.pop()
            stack.append(f"{module} {name}")
        elif op.name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"):
            count = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "EMPTY_TUPLE": 0}.get(op.name)
            items = _pop_to_mark(stack) if count is None else [stack.pop() for _ in range(count)][::-1]
            stack.append(tuple(items))
        elif op.name in ("BINPERSID", "PERSID"):
            pid = stack.pop() if op.name == "BINPERSID" else arg
            if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[4], int):
                key, itemsize = str(pid[2]), _itemsize(pid[1])
                needed[key] = max(needed.get(key, 0), pid[4] * itemsize)
            stack.append(None)
        else:  # any other opcode: its documented stack effect, with the value it carries
            before = op.stack_before
            if pickletools.markobject in before:
                _pop_to_mark(stack)
                before = before[: before.index(pickletools.markobject)]
            del stack[len(stack) - len(before):]
            stack.extend([arg if len(op.stack_after) == 1 and arg is not None else None] * len(op.stack_after))
    return needed


def _pop_to_mark(stack: list) -> list:
    """The items above the topmost mark, removing them and the mark."""
    at = len(stack) - 1 - stack[::-1].index(_MARK)
    items = stack[at + 1:]
    del stack[at:]
    return items


def _itemsize(storage: object) -> int:
    """Bytes per element of a storage class named `torch <Type>Storage`."""
    module, _, name = str(storage).partition(" ")
    if module != "torch" or name not in ITEMSIZES:
        raise ValueError(f"unknown storage type {shown(str(storage))}")
    return ITEMSIZES[name]
