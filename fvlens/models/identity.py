"""Cheap file identity: size, modification time and a hash of the first and last few MiB.

Hashing a whole model file on every load costs seconds (0.7 GB for the 135M model, gigabytes
for larger ones). A file is instead recorded with its size, ``mtime_ns``, the sha256 of its
first and last ``EDGE_BYTES`` ("edges") and its full sha256. ``verify`` trusts a file whose
size, mtime and edges all match the record; it hashes the whole file only when the mtime moved
with size and edges unchanged (a copy, a touch, or an edit in the middle), and a different size
or different edges are a different file at once.

Known limit, by design: an edit in the middle of a file that keeps its size and its mtime (a
deliberate ``touch -d`` back, or corruption below the file system) passes the cheap check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["EDGE_BYTES", "FileIdentity", "edge_hash", "edge_key", "sha256_file", "identify",
           "verify"]

EDGE_BYTES = 4 << 20
_CHUNK = 1 << 22


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's whole content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def edge_hash(path: str | os.PathLike) -> str:
    """sha256 of the file's size, first ``EDGE_BYTES`` and last ``EDGE_BYTES`` (whole file if
    it is shorter than twice that)."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode() + b":")
    with open(path, "rb") as f:
        if size <= 2 * EDGE_BYTES:
            h.update(f.read())
        else:
            h.update(f.read(EDGE_BYTES))
            f.seek(size - EDGE_BYTES)
            h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


def edge_key(path: str | os.PathLike) -> str:
    """A content key for cache names: ``size:edge_hash`` (reads at most 2 × EDGE_BYTES)."""
    return f"{os.path.getsize(path)}:{edge_hash(path)}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileIdentity:
    """What a file was when recorded: size, mtime (ns), edge hash and full sha256."""

    size: int
    mtime_ns: int
    edges: str
    sha256: str

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError("size must be >= 0")
        for name in ("edges", "sha256"):
            value = getattr(self, name)
            if not (isinstance(value, str) and len(value) == 64):
                raise ValueError(f"{name} must be a sha256 hex digest, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FileIdentity":
        return cls(size=int(d["size"]), mtime_ns=int(d["mtime_ns"]), edges=str(d["edges"]),
                   sha256=str(d["sha256"]))


def identify(path: str | os.PathLike, sha256: str | None = None) -> FileIdentity:
    """Record a file (hashes it whole unless its ``sha256`` is given, e.g. just computed)."""
    st = os.stat(path)
    return FileIdentity(size=st.st_size, mtime_ns=st.st_mtime_ns, edges=edge_hash(path),
                        sha256=sha256 if sha256 is not None else sha256_file(path))


def verify(path: str | os.PathLike, recorded: FileIdentity) -> tuple[bool, FileIdentity | None]:
    """Whether ``path`` still is the recorded file, hashing it whole only when needed.

    Returns:
        ``(same, refreshed)``: ``same`` is the verdict; ``refreshed`` is a new record when the
        content is the same but the mtime moved (store it so the next check is cheap again),
        else None.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return False, None
    if st.st_size != recorded.size or edge_hash(path) != recorded.edges:
        return False, None
    if st.st_mtime_ns == recorded.mtime_ns:
        return True, None
    if sha256_file(path) != recorded.sha256:
        return False, None
    return True, dataclasses.replace(recorded, mtime_ns=st.st_mtime_ns)
