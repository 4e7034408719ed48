"""Model fingerprints: equal for the same model (any dtype, any spec), different otherwise."""

from __future__ import annotations

import json

import torch

from conftest import make_tiny
from fvlens.models import Processing, fingerprint, fingerprint_mismatch, load_model
from tiny_hf import tiny_hf_dir


def test_two_loads_have_equal_fingerprints(tmp_path, monkeypatch):
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    model_dir = tiny_hf_dir(tmp_path / "tiny-model", "llama")
    a, b = load_model(model_dir), load_model(model_dir)  # converted, then from the cache
    fa, fb = fingerprint(a), fingerprint(b)
    assert fa == fb and fingerprint_mismatch(fa, fb) is None
    json.dumps(fa)  # saved beside vectors: JSON-able
    assert fa["architecture"]["n_layers"] == 2 and fa["architecture"]["d_model"] == 32
    assert fa["processing"] == {"fold_ln": True, "center_writing_weights": False,
                                "center_unembed": False, "fold_value_biases": False}
    assert fa["dtype"] == "float32" and len(fa["weights_sha256"]) == 16


def test_dtype_alone_is_not_a_different_model(tmp_path, monkeypatch):
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    model_dir = tiny_hf_dir(tmp_path / "tiny-model", "llama")
    fp32 = fingerprint(load_model(model_dir))
    for dtype in (torch.bfloat16, torch.float16):
        low = fingerprint(load_model(model_dir, dtype=dtype))
        assert low["weights_sha256"] != fp32["weights_sha256"]
        assert fingerprint_mismatch(fp32, low) is None
        assert fingerprint_mismatch(low, fp32) is None


def test_other_weights_of_the_same_shape_differ(tmp_path, monkeypatch):
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    a = fingerprint(load_model(tiny_hf_dir(tmp_path / "a", "llama", seed=0)))
    b = fingerprint(load_model(tiny_hf_dir(tmp_path / "b", "llama", seed=1)))
    assert a["architecture"] == b["architecture"]
    why = fingerprint_mismatch(a, b)
    assert why is not None and "weights differ" in why
    assert "'a'" in why or "a (" in why
    b16 = fingerprint(load_model(tmp_path / "b", dtype=torch.bfloat16))
    assert "weights differ" in fingerprint_mismatch(a, b16)  # also across dtypes


def test_a_different_tiny_model_names_both(tmp_path, monkeypatch):
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    loaded = fingerprint(load_model(tiny_hf_dir(tmp_path / "tiny-model", "llama")))
    other = fingerprint(make_tiny("llama"))
    why = fingerprint_mismatch(loaded, other)
    assert why.startswith("different models: tiny-model (LlamaForCausalLM, 2 layers")
    assert "3 layers" in why and "n_layers 2 vs 3" in why


def test_processing_flags_are_part_of_the_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    model_dir = tiny_hf_dir(tmp_path / "tiny-model", "llama")
    a = fingerprint(load_model(model_dir))
    b = fingerprint(load_model(model_dir, processing=Processing(center_unembed=True)))
    assert "processing" in fingerprint_mismatch(a, b)


def test_fingerprint_reads_only_a_few_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    fp = fingerprint(load_model(tiny_hf_dir(tmp_path / "tiny-model", "gemma3")))
    n = sum(len(v) for v in fp["weights_sample"].values())
    assert 32 <= n <= 400
    assert "embed.W_E[mid]" in fp["weights_sample"] and "unembed.W_U" in fp["weights_sample"]
