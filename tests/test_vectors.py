"""Vectors as files that know their model: round trips, and refusal on another model."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_tiny
from fvlens.cli import main
from fvlens.heads.scores import HeadScores
from fvlens.hooks import assert_no_hooks
from fvlens.steering import DistributedFV, FunctionVector
from fvlens.vectors import load_vector, read_vector_meta, save_vector


def _vectors(model):
    g = torch.Generator().manual_seed(0)
    cfg = model.cfg
    return [FunctionVector(vector=torch.randn(cfg.d_model, generator=g), heads=((0, 1), (2, 3)),
                           layer=1),
            DistributedFV(heads=((0, 1), (2, 0)), means=torch.randn(2, cfg.d_head, generator=g)),
            HeadScores(scores=torch.randn(cfg.n_layers, cfg.n_heads, generator=g), method="aie",
                       tasks=("antonym",), prompt_mode="icl", n_samples=5, meta={"impl": "fast"}),
            torch.randn(cfg.d_model, generator=g)]


def test_every_kind_round_trips(tiny_llama, tmp_path):
    for i, vec in enumerate(_vectors(tiny_llama)):
        path = save_vector(vec, tmp_path / f"v{i}.safetensors", tiny_llama,
                           meta={"task": "antonym", "scale": 2.0})
        back = load_vector(path, tiny_llama)
        assert type(back) is type(vec)
        if isinstance(vec, FunctionVector):
            assert torch.equal(back.vector, vec.vector) and back.heads == vec.heads
            assert back.layer == 1
        elif isinstance(vec, DistributedFV):
            assert torch.equal(back.means, vec.means) and back.heads == vec.heads
        elif isinstance(vec, HeadScores):
            assert torch.equal(back.scores, vec.scores) and back.top_k(3) == vec.top_k(3)
            assert back.meta == vec.meta and back.n_samples == 5
        else:
            assert torch.equal(back, vec)
        meta = read_vector_meta(path)
        assert meta["meta"] == {"task": "antonym", "scale": 2.0}
        assert meta["fingerprint"]["architecture"]["n_layers"] == tiny_llama.cfg.n_layers


def test_another_model_is_refused_naming_both(tiny_llama, tmp_path):
    path = save_vector(_vectors(tiny_llama)[0], tmp_path / "fv.safetensors", tiny_llama)
    other = make_tiny("llama")                      # same architecture, other weights
    with torch.no_grad():
        other.embed.W_E.add_(1.0)
    with pytest.raises(ValueError, match="another model.*weights differ.*strict=False"):
        load_vector(path, other)
    with pytest.warns(UserWarning, match="another model"):
        assert isinstance(load_vector(path, other, strict=False), FunctionVector)
    gpt2 = make_tiny("gpt2")
    with pytest.raises(ValueError, match="normalization_type"):
        load_vector(path, gpt2)


def test_not_a_vector_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_vector(bad)
    with pytest.raises(FileNotFoundError):
        load_vector(tmp_path / "missing.safetensors")
    with pytest.raises((ValueError, TypeError)):  # jaxtyping's check, else fvlens's message
        save_vector({"a": 1}, tmp_path / "d.safetensors", make_tiny("llama"))


def test_steer_with_a_saved_vector(tiny_tok_model, tmp_path, monkeypatch, capsys):
    import fvlens.models

    monkeypatch.setattr(fvlens.models, "load_model", lambda *a, **k: tiny_tok_model)
    fv = FunctionVector(vector=30 * tiny_tok_model.W_U[:, 7].detach(), layer=2)
    path = save_vector(fv, tmp_path / "fv.safetensors", tiny_tok_model, meta={"task": "x"})
    assert main(["steer", "Q: a\\nA:", "--vector", str(path), "--max-new-tokens", "3",
                 "--out", str(tmp_path / "o")]) == 0
    rep = json.loads((tmp_path / "o" / "steer.json").read_text())
    assert rep["kind"] == "FunctionVector" and rep["layer"] == 2 and rep["task"] == "x"
    assert rep["steered"] != rep["unsteered"]
    assert_no_hooks(tiny_tok_model)
    assert main(["steer", "Q: a\\nA:"]) == 2
    assert "give --task" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_model_vector_refused_on_a_tiny_model(smollm, tmp_path):
    fv = FunctionVector(vector=torch.zeros(smollm.cfg.d_model), layer=3)
    path = save_vector(fv, tmp_path / "fv.safetensors", smollm)
    with pytest.raises(ValueError, match=r"smollm2-135m.*and.*d_model"):
        load_vector(path, make_tiny("llama"))
    assert isinstance(load_vector(path, smollm), FunctionVector)
