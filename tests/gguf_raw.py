"""GGUF files packed byte by byte, for tests of the reader on files no writer would produce.

`write(path, pairs, tensors)` lays out a header exactly as given (counts, types and offsets
are not checked), then pads to 32 bytes and appends `data`. The defaults describe a tiny
valid one-block Llama: a 4-wide embedding of 8 tokens and one query projection.
"""

from __future__ import annotations

import pathlib
import struct

UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9  # GGUF value types
F32, Q8_0, Q8_1, I32 = 0, 8, 9, 26  # GGML tensor types
SCALAR_FORMATS = {UINT32: "<I", INT32: "<i", FLOAT32: "<f", BOOL: "<?"}

LLAMA = [("general.architecture", STRING, "llama"), ("llama.block_count", UINT32, 1),
         ("llama.embedding_length", UINT32, 4), ("llama.feed_forward_length", UINT32, 8),
         ("llama.attention.head_count", UINT32, 2)]
TENSORS = [("token_embd.weight", (4, 8), F32, 0), ("blk.0.attn_q.weight", (4, 4), F32, 128)]


def string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def value(kind: int, item) -> bytes:
    """A value of GGUF type `kind`; an ARRAY's `item` is (item type, [values]); bytes pass through as they are."""
    if isinstance(item, bytes):
        return item
    if kind == STRING:
        return string(item)
    if kind == ARRAY:
        inner, items = item
        return struct.pack("<IQ", inner, len(items)) + b"".join(value(inner, x) for x in items)
    return struct.pack(SCALAR_FORMATS[kind], item)


def pair(key: str | bytes, kind: int, item) -> bytes:
    return string(key) + struct.pack("<I", kind) + value(kind, item)


def write(path: pathlib.Path, pairs=LLAMA, tensors=TENSORS, *, data: bytes = b"\0" * 192, magic: bytes = b"GGUF",
          version: int = 3, counts: tuple[int, int] | None = None, raw_pairs: bytes = b"") -> pathlib.Path:
    """A GGUF file: `pairs` (key, type, value), then `raw_pairs` (bytes), `tensors` (name, dims, type id, offset)."""
    tensor_count, pair_count = counts or (len(tensors), len(pairs) + bool(raw_pairs))
    out = magic + struct.pack("<IQQ", version, tensor_count, pair_count)
    out += b"".join(pair(*p) for p in pairs) + raw_pairs
    for name, dims, kind, offset in tensors:
        out += string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, kind, offset)
    path.write_bytes(out + b"\0" * (-len(out) % 32) + data)
    return path
