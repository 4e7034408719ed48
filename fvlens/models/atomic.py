"""Atomic, shareable writes into the cache: temp paths renamed into place, swept when stale.

Everything the cache holds is built under a hidden temporary name beside its final name
(``.<name>.<random>``) and renamed into place, so a reader never sees a half-written entry and a
process killed midway leaves only a temp path. Temp paths are removed on failure, and ones older
than ``STALE_SECONDS`` (a writer that died) are swept by the next writer; younger ones may belong
to a live concurrent writer and are left alone. ``mkdtemp``/``mkstemp`` create private (0700/0600)
paths; they are re-moded to what the umask allows (0755/0644 under the usual umask 022), so a cache
shared by a group (umask 002) is readable by every member.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["STALE_SECONDS", "umask", "share", "sweep_stale", "temp_dir", "temp_file",
           "publish"]

STALE_SECONDS = 15 * 60


def umask() -> int:
    """The process umask (from /proc on Linux; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share(path: Path) -> None:
    """Give ``path`` (recursively, if a folder) the modes a plain mkdir/open would give."""
    mask = umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o777 & ~mask)
            for f in files:
                os.chmod(os.path.join(root, f), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def sweep_stale(parent: Path, name: str, max_age: float = STALE_SECONDS) -> list[Path]:
    """Remove temp paths ``.<name>.*`` in ``parent`` older than ``max_age`` seconds.

    Returns:
        The paths removed.
    """
    removed = []
    if not parent.is_dir():
        return removed
    now = time.time()
    for p in parent.glob(f".{name}.*"):
        try:
            if now - p.lstat().st_mtime < max_age:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            continue  # another process swept it, or it is not ours to remove
    return removed


@contextlib.contextmanager
def temp_dir(parent: Path, name: str) -> Iterator[Path]:
    """A fresh temp folder ``parent/.<name>.<random>``, removed if the block raises."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def temp_file(parent: Path, name: str) -> Iterator[Path]:
    """A fresh temp file ``parent/.<name>.<random>``, removed if the block raises."""
    parent.mkdir(parents=True, exist_ok=True)
    fd, raw = tempfile.mkstemp(prefix=f".{name}.", dir=parent)
    os.close(fd)
    tmp = Path(raw)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish(tmp: Path, final: Path) -> bool:
    """Rename a finished temp path into place, readable as the umask allows.

    A folder is never renamed over an existing one: if another writer published ``final``
    first, ours is removed and theirs is kept. A file replaces an existing file.

    Returns:
        True when ``tmp`` became ``final``; False when an existing folder was kept.
    """
    share(tmp)
    if tmp.is_dir():
        try:
            os.rename(tmp, final)
            return True
        except OSError:
            if final.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
                return False
            raise
    os.replace(tmp, final)
    return True
