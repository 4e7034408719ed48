"""The weight cache under damage: edited metadata, dead writers, sharing, bad inputs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fvlens.models import load_model
from fvlens.models import atomic
from fvlens.models.cache import META, WEIGHTS
from fvlens.models.gguf_check import check_gguf, expected_size
from tiny_hf import tiny_hf_dir

TOKENS = torch.tensor([[3, 5, 7, 11, 13, 2]])


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """A tiny model folder, loaded once into a fresh cache: (folder, entry, logits)."""
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    model_dir = tiny_hf_dir(tmp_path / "tiny-model", "llama")
    model = load_model(model_dir)
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    with torch.no_grad():
        logits = model(TOKENS)
    return model_dir, entry, logits


def _edit_meta(entry: Path, fn, rehash: bool = False) -> None:
    import hashlib

    meta = json.loads((entry / META).read_text())
    fn(meta["content"])
    if rehash:  # a careful editor who also fixes the hash in meta.json
        canon = json.dumps(meta["content"], sort_keys=True, separators=(",", ":"), default=str)
        meta["content_sha256"] = hashlib.sha256(canon.encode()).hexdigest()
    (entry / META).write_text(json.dumps(meta))


@pytest.mark.parametrize("field,value", [("n_ctx", 32), ("default_prepend_bos", True)])
@pytest.mark.parametrize("rehash", [False, True])
def test_edited_meta_is_detected_and_rebuilt(cached, field, value, rehash):
    model_dir, entry, logits = cached
    _edit_meta(entry, lambda c: c["cfg"].__setitem__(field, value), rehash=rehash)
    with pytest.warns(UserWarning, match="edited|does not describe"):
        model = load_model(model_dir)
    assert not model.fvlens_meta["from_cache"]
    assert getattr(model.cfg, field) != value
    again = load_model(model_dir)
    assert again.fvlens_meta["from_cache"] and getattr(again.cfg, field) != value
    with torch.no_grad():
        assert torch.equal(again(TOKENS), logits)


def test_stale_temp_dirs_are_swept_fresh_ones_kept(cached):
    model_dir, entry, _ = cached
    stale = entry.parent / f".{entry.name}.dead"
    fresh = entry.parent / f".{entry.name}.live"
    for d in (stale, fresh):
        d.mkdir()
        (d / WEIGHTS).write_bytes(b"partial")
    old = time.time() - atomic.STALE_SECONDS - 60
    os.utime(stale, (old, old))
    load_model(model_dir)
    assert not stale.exists() and fresh.exists()


def test_failed_write_leaves_no_temp_and_no_entry(tmp_path, monkeypatch):
    import safetensors.torch

    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    model_dir = tiny_hf_dir(tmp_path / "tiny-model", "llama")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.warns(UserWarning, match="could not write the weight cache"):
        model = load_model(model_dir)
    assert model.fvlens_meta["cache_entry"] is None
    assert list((tmp_path / "cache").iterdir()) == []


KILLED_WRITER = """
import os, sys
import fvlens.models.cache as cache
def die(*a, **k):
    os._exit(9)          # killed after the weights, before meta.json and the rename
cache.atomic.publish = die
from fvlens.models import load_model
load_model(sys.argv[1])
"""


def test_conversion_killed_midway_leaves_nothing_used(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FVLENS_CACHE", str(cache))
    model_dir = tiny_hf_dir(tmp_path / "tiny-model", "llama")
    env = os.environ | {"FVLENS_CACHE": str(cache),
                        "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(model_dir)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 9, done.stderr[-2000:]
    (temp,) = cache.iterdir()
    assert temp.name.startswith(".") and (temp / WEIGHTS).is_file()
    model = load_model(model_dir)  # converts again: the dead writer's temp is never read
    assert not model.fvlens_meta["from_cache"] and temp.exists()  # young: may be live
    old = time.time() - atomic.STALE_SECONDS - 60
    os.utime(temp, (old, old))
    again = load_model(model_dir)
    assert again.fvlens_meta["from_cache"] and not temp.exists()


def test_entries_are_readable_by_the_group(tmp_path, monkeypatch):
    mask = os.umask(0o022)
    try:
        monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
        load_model(tiny_hf_dir(tmp_path / "tiny-model", "llama"))
    finally:
        os.umask(mask)
    (entry,) = (tmp_path / "cache").iterdir()
    for path in [entry, *entry.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_truncated_weights_are_rebuilt(cached):
    model_dir, entry, logits = cached
    weights = entry / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.warns(UserWarning, match="unusable"):
        model = load_model(model_dir)
    with torch.no_grad():
        assert torch.equal(model(TOKENS), logits)


def test_flipped_byte_in_weights_is_rebuilt(cached):
    model_dir, entry, logits = cached
    weights = entry / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # mtime moves: the full hash runs and catches it
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="unusable"):
        model = load_model(model_dir)
    with torch.no_grad():
        assert torch.equal(model(TOKENS), logits)


def _tiny_gguf(path: Path) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.random((64, 16), dtype=np.float32))
    w.add_tensor("output.weight", rng.random((64, 16)).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_truncated_gguf_says_truncated_with_sizes(tmp_path):
    path = _tiny_gguf(tmp_path / "tiny.gguf")
    need = expected_size(path)
    assert need <= path.stat().st_size
    check_gguf(path)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:need - 100])
    with pytest.raises(ValueError, match=rf"cut.gguf is truncated: {need - 100} bytes.*needs "
                                         rf"{need} bytes"):
        load_model(cut, use_cache=False)
    head = tmp_path / "head.gguf"
    head.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated.*header"):
        check_gguf(head)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="not a GGUF file"):
        check_gguf(junk)


@pytest.mark.parametrize("text", ["{not json", json.dumps({"model_type": "llama"}),
                                  json.dumps({"architectures": ["X"]})])
def test_bad_config_json_is_one_clear_error(tmp_path, text):
    folder = tmp_path / "bad-model"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    with pytest.raises((ValueError, NotImplementedError), match=str(folder)) as err:
        load_model(folder, use_cache=False)
    assert "bad-model" in str(err.value)


def test_unreachable_hub_name_is_file_not_found(monkeypatch, tmp_path):
    from transformer_lens import HookedTransformer

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(HookedTransformer, "from_pretrained", offline)
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="could not fetch 'gpt2'.*local model folder"):
        load_model("gpt2")
