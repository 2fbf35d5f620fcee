"""A validating parser of GGUF headers (llama.cpp's checkpoint format, versions 2 and 3).

No count, length or offset in the file is trusted: a string, a metadata array or the list
of tensors must fit in the bytes that remain before it is read, arrays do not nest, and
every tensor has at most four dimensions, a type the `gguf` package can dequantise, and a
data range that lies inside the file, is aligned, and overlaps no other tensor. So a
hostile or truncated header can neither loop, recurse nor allocate beyond the file's own
size. Keys and tensor names must be printable, and every error names the file and the
field (found values escaped and shortened, so a message cannot drive a terminal).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct
from typing import Any

import gguf
import numpy as np

from jaxinterp.errors import CheckpointError, shown

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32
# GGUF value type -> little-endian struct format (8 is a string, 9 an array).
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
SMALLEST_PAIR = 8 + 4  # a metadata pair holds at least a key length and a value type
SMALLEST_TENSOR = 8 + 4 + 4 + 8  # a tensor info holds at least a name length, n_dims, a type and an offset


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes lie: `dims` in GGUF order (fastest-varying first)."""

    name: str
    dims: tuple[int, ...]
    kind: gguf.GGMLQuantizationType
    start: int  # absolute offset in the file
    size: int  # bytes

    @property
    def shape(self) -> tuple[int, ...]:
        """The numpy (row-major) shape."""
        return tuple(reversed(self.dims))


@dataclasses.dataclass(frozen=True)
class Header:
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]


@functools.lru_cache(maxsize=None)
def dequantisable(kind: gguf.GGMLQuantizationType) -> bool:
    """Whether the installed `gguf` package can dequantise `kind` (probed on one zero block)."""
    try:
        gguf.quants.dequantize(np.zeros((1, gguf.GGML_QUANT_SIZES[kind][1]), np.uint8), kind)
    except NotImplementedError:
        return False
    return True


class _Cursor:
    """Reads a buffer front to back; every read is checked against the bytes that remain."""

    def __init__(self, path: str, data: np.ndarray):
        self.path, self.data, self.pos = path, data, 0

    def fail(self, field: str, message: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {field}: {shown(message, 500)}")

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int, field: str) -> np.ndarray:
        if count > self.left:
            raise self.fail(field, f"needs {count} bytes at offset {self.pos}, found {self.left} left (truncated file?)")
        self.pos += count
        return self.data[self.pos - count: self.pos]

    def number(self, fmt: str, field: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), field))[0]

    def string(self, field: str) -> str:
        raw = bytes(self.take(self.number("<Q", field), field))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(field, f"expected UTF-8 text, found undecodable bytes ({shown(str(e))})") from None

    def name(self, field: str) -> str:
        """A string that names something (a key, a tensor): printable, so messages can quote it."""
        text = self.string(field)
        if not text.isprintable():
            raise self.fail(field, f"expected printable text, found {text!r}")
        return text

    def value(self, kind: int, field: str) -> Any:
        if kind in SCALARS:
            return self.number(SCALARS[kind], field)
        if kind == STRING:
            return self.string(field)
        if kind != ARRAY:
            raise self.fail(field, f"value type: expected one of 0..12, found {kind}")
        item, count = self.number("<I", field), self.number("<Q", field)
        if item not in SCALARS and item != STRING:
            raise self.fail(field, f"array item type: expected a number or a string (arrays do not nest), found {item}")
        smallest = struct.calcsize(SCALARS[item]) if item in SCALARS else 8
        if count * smallest > self.left:
            raise self.fail(field, f"{count} array items cannot fit in the {self.left} bytes left (truncated file?)")
        if item in SCALARS:
            return self.take(count * smallest, field).view(np.dtype(SCALARS[item])).tolist()
        return [self.string(field) for _ in range(count)]


def read_header(path: str, data: np.ndarray) -> Header:
    """The metadata and tensor layout of the GGUF file `path` whose bytes are `data` (uint8)."""
    cursor = _Cursor(path, data)
    magic = bytes(cursor.take(4, "magic"))
    if magic != MAGIC:
        raise cursor.fail("magic", f"expected {MAGIC!r} (a GGUF file), found {magic!r}")
    version = cursor.number("<I", "version")
    if version not in VERSIONS:
        raise cursor.fail("version", f"expected one of {VERSIONS} (little-endian), found {version}")
    tensor_count, pair_count = cursor.number("<Q", "tensor_count"), cursor.number("<Q", "metadata_kv_count")
    if pair_count * SMALLEST_PAIR + tensor_count * SMALLEST_TENSOR > cursor.left:
        raise cursor.fail("metadata_kv_count", f"{pair_count} metadata pairs and {tensor_count} tensors "
                          f"cannot fit in the {cursor.left} bytes left")
    metadata: dict[str, Any] = {}
    for i in range(pair_count):
        key = cursor.name(f"metadata key #{i}")
        if key in metadata:
            raise cursor.fail(f"metadata field {key}", "appears twice")
        field = f"metadata field {key}"
        metadata[key] = cursor.value(cursor.number("<I", field), field)
    layouts = []
    for i in range(tensor_count):
        name = cursor.name(f"tensor #{i} name")
        field = f"tensor {name}"
        n_dims = cursor.number("<I", field)
        if not 1 <= n_dims <= MAX_DIMS:
            raise cursor.fail(field, f"n_dims: expected 1..{MAX_DIMS}, found {n_dims}")
        dims = tuple(cursor.number("<Q", field) for _ in range(n_dims))
        layouts.append((name, dims, cursor.number("<I", field), cursor.number("<Q", field)))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not (type(alignment) is int and alignment > 0 and alignment & (alignment - 1) == 0):
        raise cursor.fail("metadata field general.alignment", f"expected a power of two, found {alignment!r}")
    data_start = -(-cursor.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    for name, dims, kind, offset in layouts:
        if name in tensors:
            raise cursor.fail(f"tensor {name}", "appears twice")
        tensors[name] = _tensor(cursor, name, dims, kind, offset, data_start, alignment)
    extents = sorted((t.start, t.start + t.size, t.name) for t in tensors.values() if t.size)
    for (_, end, first), (begin, _, second) in zip(extents, extents[1:]):
        if begin < end:
            raise cursor.fail(f"tensor {second}", f"data range overlaps tensor {first}")
    return Header(metadata, tensors)


def _tensor(cursor: _Cursor, name: str, dims: tuple[int, ...], kind: int, offset: int, data_start: int,
            alignment: int) -> TensorInfo:
    """One tensor's layout, checked against the file."""
    field = f"tensor {name}"
    quant = {q.value: q for q in gguf.GGMLQuantizationType}.get(kind)
    if quant is None or not dequantisable(quant):
        supported = sorted(q.name for q in gguf.GGMLQuantizationType if dequantisable(q))
        found = quant.name if quant is not None else f"unknown type id {kind}"
        raise cursor.fail(field, f"type: expected one of {supported}, found {found}")
    block, block_bytes = gguf.GGML_QUANT_SIZES[quant]
    if dims[0] % block:
        raise cursor.fail(field, f"dims: the first dimension must be a multiple of {quant.name}'s block of {block}, "
                                 f"found {list(dims)}")
    if offset % alignment:
        raise cursor.fail(field, f"offset: expected a multiple of the alignment {alignment}, found {offset}")
    size = math.prod(dims) // block * block_bytes
    start = data_start + offset
    if start + size > len(cursor.data):
        raise cursor.fail(field, f"data [{start}, {start + size}) for dims {list(dims)} {quant.name} lies beyond "
                                 f"the end of the {len(cursor.data)}-byte file (truncated file?)")
    return TensorInfo(name, dims, quant, start, size)
