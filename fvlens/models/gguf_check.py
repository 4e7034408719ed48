"""A GGUF file's expected size from its own header, so a truncated file says "truncated".

A GGUF file is a header (magic, version, counts), metadata key/values, a tensor table (name,
shape, type, offset) and the aligned tensor data. The data must reach the last tensor's end;
``expected_size`` walks the header and table (no tensor data read) and ``check_gguf`` compares
that with the file's size before any expensive load. Without it a truncated file fails deep in
the GGUF reader with "cannot reshape array of size …".
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

__all__ = ["expected_size", "check_gguf"]

_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
           12: "d"}
_STRING, _ARRAY = 8, 9


class _Truncated(Exception):
    pass


class _Cursor:
    def __init__(self, buf) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise _Truncated
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise _Truncated
        self.pos += n

    def string(self) -> bytes:
        n = self.take("Q")
        start = self.pos
        self.skip(n)
        return bytes(self.buf[start:self.pos])

    def value(self, vtype: int):
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item, count = self.take("I"), self.take("Q")
            if item in _SCALAR:
                self.skip(count * struct.calcsize("<" + _SCALAR[item]))
            else:
                for _ in range(count):
                    self.value(item)
            return None
        raise ValueError(f"unknown GGUF value type {vtype}")


def expected_size(path: str | os.PathLike) -> int:
    """The size in bytes that a GGUF file's header and tensor table imply.

    Raises:
        ValueError: not a GGUF file, or the header itself is cut off (the message says
            truncated).
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    actual = path.stat().st_size
    with open(path, "rb") as f:
        if actual < 24 or f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic at its start)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf)
            cur.skip(4)
            try:
                version = cur.take("I")
                if version < 2:
                    raise ValueError(f"{path}: GGUF version {version} is not supported")
                n_tensors, n_kv = cur.take("Q"), cur.take("Q")
                alignment = 32
                for _ in range(n_kv):
                    key = cur.string()
                    value = cur.value(cur.take("I"))
                    if key == b"general.alignment":
                        alignment = int(value)
                end = 0
                for _ in range(n_tensors):
                    cur.string()
                    n_dims = cur.take("I")
                    n_elements = 1
                    for _ in range(n_dims):
                        n_elements *= cur.take("Q")
                    ttype, offset = cur.take("I"), cur.take("Q")
                    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
                    end = max(end, offset + n_elements // block * type_size)
                data_start = -(-cur.pos // alignment) * alignment
            except _Truncated:
                raise ValueError(
                    f"{path} is truncated: its {actual} bytes end inside the GGUF header "
                    "(metadata or tensor table); re-download or re-copy the file"
                ) from None
    return data_start + end


def check_gguf(path: str | os.PathLike) -> None:
    """Refuse a truncated GGUF file with the numbers, before anything loads it.

    Raises:
        ValueError: the file is not GGUF, or shorter than its tensor table says (the message
            names the path and the expected and actual sizes).
    """
    need = expected_size(path)
    actual = os.path.getsize(path)
    if actual < need:
        raise ValueError(
            f"{path} is truncated: {actual} bytes, but its tensor table needs {need} bytes "
            f"({need - actual} missing); re-download or re-copy the file"
        )
