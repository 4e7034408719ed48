"""dtype and device: weights processed in float32, then cast; the cache holds float32 once."""

from __future__ import annotations

import pytest
import torch

from fvlens.models import load_model
from tiny_hf import tiny_hf_dir

# bfloat16 keeps 8 significant bits: each weight and activation carries a relative rounding
# error up to 2^-8 ≈ 4e-3, which over four tiny Gemma 3 layers and a 63-way softmax stays well
# below 0.05 in log-prob (measured max 8.1e-3). float16 keeps 11 bits (measured 1.0e-3).
BF16_LOGPROB_ATOL = 5e-2
FP16_LOGPROB_ATOL = 1e-2
TOKENS = torch.tensor([[3, 5, 7, 11, 13, 2, 17, 19]])


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    return tiny_hf_dir(tmp_path / "tiny-model", "gemma3")


@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, BF16_LOGPROB_ATOL),
                                        (torch.float16, FP16_LOGPROB_ATOL)])
def test_reduced_precision_on_cpu_is_close_to_float32(model_dir, dtype, atol, tmp_path):
    fp32 = load_model(model_dir, device="cpu")
    low = load_model(model_dir, device="cpu", dtype=dtype)
    assert low.fvlens_meta["from_cache"]  # one float32 entry serves every dtype
    assert len([p for p in (tmp_path / "cache").iterdir()]) == 1
    assert {p.dtype for p in low.parameters()} == {dtype}
    assert low.cfg.dtype == dtype and low.fvlens_meta["dtype"] == str(dtype)[6:]
    with torch.no_grad():
        ref = fp32(TOKENS).log_softmax(-1)
        got = low(TOKENS).float().log_softmax(-1)
    assert (got - ref).abs().max().item() < atol
    assert not torch.equal(got, ref)  # it really ran in the lower precision


def test_cast_is_of_the_float32_processed_weights(model_dir):
    # Processing happens in float32, then one rounding: bf16 weights equal fp32 weights cast.
    fp32 = load_model(model_dir)
    bf16 = load_model(model_dir, dtype="bfloat16")
    for (name, a), (_, b) in zip(fp32.named_parameters(), bf16.named_parameters()):
        assert torch.equal(a.to(torch.bfloat16), b), name


def test_dtype_names_and_bad_dtypes(model_dir):
    assert load_model(model_dir, dtype="bf16").cfg.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model(model_dir, dtype=torch.int8)
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model(model_dir, dtype="float8")


def test_device_checks(model_dir):
    model = load_model(model_dir, device="cpu")
    assert model.cfg.device == "cpu" and model.W_E.device.type == "cpu"
    assert model.fvlens_meta["device"] == "cpu" and model.fvlens_meta["n_devices"] == 1
    with pytest.raises(ValueError, match="not a torch device"):
        load_model(model_dir, device="toaster")
    with pytest.raises(ValueError, match="n_devices=2 needs CUDA"):
        load_model(model_dir, device="cpu", n_devices=2)
    with pytest.raises(ValueError, match="n_devices must be an int"):
        load_model(model_dir, n_devices=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model(model_dir, device="cuda")


def test_default_device(model_dir):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert load_model(model_dir).W_E.device.type == expected


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_split_the_layers(model_dir):  # pragma: no cover - GPU machines only
    model = load_model(model_dir, device="cuda", n_devices=2)
    devices = {p.device for p in model.parameters()}
    assert len(devices) == 2
    with torch.no_grad():
        model(TOKENS)
