"""Cheap file identity: what the size/mtime/edge check catches, and what it does not."""

from __future__ import annotations

import os

import pytest

from fvlens.models import identity
from fvlens.models.identity import FileIdentity, identify, verify

EDGE = 16  # a tiny edge so that a 200-byte file has an unhashed middle


@pytest.fixture
def small_edges(monkeypatch):
    monkeypatch.setattr(identity, "EDGE_BYTES", EDGE)


def _file(tmp_path, data=bytes(range(200))):
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    return path


def _rewrite_keeping_mtime(path, data):
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_unchanged_file_is_trusted_without_a_full_hash(tmp_path, small_edges, monkeypatch):
    path = _file(tmp_path)
    rec = identify(path)
    monkeypatch.setattr(identity, "sha256_file", lambda p: pytest.fail("hashed whole"))
    assert verify(path, rec) == (True, None)


def test_middle_edit_with_same_size_and_mtime_is_not_detected(tmp_path, small_edges):
    # The documented limit of the cheap check: nothing it reads has changed.
    path = _file(tmp_path)
    rec = identify(path)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    _rewrite_keeping_mtime(path, bytes(data))
    assert verify(path, rec) == (True, None)


def test_edge_edit_with_same_size_and_mtime_is_detected(tmp_path, small_edges):
    path = _file(tmp_path)
    rec = identify(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    _rewrite_keeping_mtime(path, bytes(data))
    assert verify(path, rec) == (False, None)


def test_moved_mtime_triggers_the_full_hash(tmp_path, small_edges, monkeypatch):
    path = _file(tmp_path)
    rec = identify(path)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(rec.mtime_ns + 10**9, rec.mtime_ns + 10**9))
    hashed = []
    real = identity.sha256_file
    monkeypatch.setattr(identity, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert verify(path, rec) == (False, None)
    assert hashed == [path]


def test_touched_intact_file_is_the_same_and_refreshed(tmp_path, small_edges):
    path = _file(tmp_path)
    rec = identify(path)
    os.utime(path, ns=(rec.mtime_ns + 10**9, rec.mtime_ns + 10**9))
    same, refreshed = verify(path, rec)
    assert same and refreshed == FileIdentity(size=rec.size, mtime_ns=rec.mtime_ns + 10**9,
                                              edges=rec.edges, sha256=rec.sha256)


def test_changed_size_is_different_at_once(tmp_path, small_edges, monkeypatch):
    path = _file(tmp_path)
    rec = identify(path)
    path.write_bytes(path.read_bytes() + b"x")
    monkeypatch.setattr(identity, "sha256_file", lambda p: pytest.fail("hashed whole"))
    assert verify(path, rec) == (False, None)
    path.unlink()
    assert verify(path, rec) == (False, None)


def test_record_round_trips_and_validates():
    rec = FileIdentity(size=3, mtime_ns=5, edges="a" * 64, sha256="b" * 64)
    assert FileIdentity.from_dict(rec.to_dict()) == rec
    with pytest.raises(ValueError):
        FileIdentity(size=3, mtime_ns=5, edges="short", sha256="b" * 64)
