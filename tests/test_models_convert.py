"""HF -> HookedTransformer conversion per family, on tiny random HF models (no download).

The loaded model must compute what the HF model computes: log-probs compared on random tokens
longer than the sliding window of the families that have one (Gemma 2/3: window 4, 20 tokens),
so the local/global layers, their rotary bases, q/k norms, post-norms and soft caps are all
exercised.
"""

from __future__ import annotations

import json

import pytest
import torch

from fvlens.models import CONVERSION_VERSION, Processing, load_model
from fvlens.models.build import _meta_model, complete_state
from fvlens.models.configs import CONVERTIBLE, gemma_config, tl_config
from tiny_hf import FAMILIES, tiny_hf_dir

# Same function, different kernels (fused QKV, folded norm gains, rotary layout): float32
# round-off over 2-4 tiny layers stays near 1e-6.
TINY_LOGPROB_ATOL = 1e-5
SEQ = 20  # longer than the tiny sliding window (4)


def _compare(model, model_dir) -> float:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(1)
    tokens = torch.randint(0, 60, (2, SEQ))
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        ref = hf(tokens).logits.log_softmax(-1)
    return (ours - ref).abs().max().item()


@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_hf(family, tmp_path, monkeypatch):
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    model_dir = tiny_hf_dir(tmp_path / family, family)
    model = load_model(model_dir)
    assert _compare(model, model_dir) < TINY_LOGPROB_ATOL
    again = load_model(model_dir)  # from the cache: the same numbers, bit for bit
    assert again.fvlens_meta["from_cache"]
    tokens = torch.tensor([[5, 7, 9, 11, 13, 15, 17, 19]])
    with torch.no_grad():
        assert torch.equal(again(tokens), model(tokens))


def test_gemma3_config_from_hf_fields(tmp_path):
    model_dir = tiny_hf_dir(tmp_path / "g3", "gemma3")
    hf = json.loads((model_dir / "config.json").read_text())
    d = gemma_config(hf)
    assert d["original_architecture"] == "Gemma3ForCausalLM"
    assert d["attn_types"] == ["local", "local", "global", "local"] and d["window_size"] == 4
    assert d["rotary_base"] == 1e6 and d["rotary_base_local"] == 1e4
    assert d["use_qk_norm"] and d["use_normalization_before_and_after"]
    assert d["act_fn"] == "gelu_pytorch_tanh" and d["gated_mlp"]
    assert d["attn_scale"] == pytest.approx(8 ** 0.5)  # query_pre_attn_scalar, not d_head


def test_gemma3_with_no_local_layers_has_no_window(tmp_path):
    model_dir = tiny_hf_dir(tmp_path / "g3", "gemma3",
                            layer_types=["full_attention"] * 4)
    d = gemma_config(json.loads((model_dir / "config.json").read_text()))
    assert "attn_types" not in d and "use_local_attn" not in d


def test_gemma3_unsupported_rope_type_is_refused(tmp_path):
    model_dir = tiny_hf_dir(tmp_path / "g3", "gemma3")
    hf = json.loads((model_dir / "config.json").read_text())
    hf["rope_parameters"]["full_attention"] = {"rope_type": "yarn", "rope_theta": 1e6,
                                               "factor": 4.0}
    with pytest.raises(NotImplementedError, match="yarn"):
        gemma_config(hf)


@pytest.mark.parametrize("arch,model_type", [("FalconForCausalLM", "falcon"),
                                             ("FancyNewForCausalLM", "fancy")])
def test_unsupported_architecture_names_those_that_convert(arch, model_type):
    from transformers import AutoConfig

    try:
        hf = AutoConfig.for_model(model_type).to_dict()
    except ValueError:
        hf = {"model_type": model_type}
    with pytest.raises(NotImplementedError) as err:
        tl_config(hf | {"architectures": [arch]}, name="x", fold_ln=True,
                  default_prepend_bos=False)
    text = str(err.value)
    assert arch in text and "cannot convert" in text
    assert "Gemma3ForCausalLM" in text and "Qwen2ForCausalLM" in text
    assert all(a in text for a in CONVERTIBLE)


def test_rotary_tables_equal_a_normal_construction(tmp_path):
    # complete_state takes the buffers from one real block per attention type and shares them:
    # they must equal what HookedTransformer.__init__ computes layer by layer.
    from transformer_lens import HookedTransformer

    model_dir = tiny_hf_dir(tmp_path / "g3", "gemma3")
    cfg = tl_config(json.loads((model_dir / "config.json").read_text()), name="g3",
                    fold_ln=True, default_prepend_bos=False)
    full = {k: v for k, v in HookedTransformer(cfg, move_to_device=False).state_dict().items()}
    buffers = {k for k, _ in _meta_model(cfg).named_buffers()}
    params = {k: full[k] for k in full if k not in buffers}
    state = complete_state(cfg, dict(params))
    for key in buffers:
        assert torch.equal(state[key], full[key]), key
    local = [i for i, t in enumerate(cfg.attn_types) if t == "local"]
    first, second = (state[f"blocks.{i}.attn.rotary_sin"] for i in local[:2])
    assert first is second
    assert not torch.equal(state["blocks.0.attn.rotary_sin"], state["blocks.2.attn.rotary_sin"])


def test_tied_embeddings_are_separate_parameters(tmp_path, monkeypatch):
    # Qwen2 ties lm_head to the embedding; the HookedTransformer must not (an in-place edit of
    # W_U would silently edit W_E).
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    model = load_model(tiny_hf_dir(tmp_path / "q", "qwen2"), processing=Processing(fold_ln=False))
    assert model.W_E.untyped_storage().data_ptr() != model.W_U.untyped_storage().data_ptr()
    assert model.W_U.T.is_contiguous()  # the transposed layout


def test_conversion_version_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    model = load_model(tiny_hf_dir(tmp_path / "l", "llama"))
    assert model.fvlens_meta["conversion_version"] == CONVERSION_VERSION
    (entry,) = (tmp_path / "cache").iterdir()
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["content"]["conversion_version"] == CONVERSION_VERSION


def test_other_conversion_version_is_a_different_entry(tmp_path, monkeypatch):
    import fvlens.models.loader as loader

    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    model_dir = tiny_hf_dir(tmp_path / "l", "llama")
    load_model(model_dir)
    monkeypatch.setattr(loader, "CONVERSION_VERSION", CONVERSION_VERSION + 1)
    model = load_model(model_dir)
    assert not model.fvlens_meta["from_cache"]
    assert len(list((tmp_path / "cache").iterdir())) == 2


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_rotary_tables_are_hf_s(family, tmp_path, monkeypatch):
    # The converted model's sin/cos tables equal HF's own rotary embedding bit for bit, at
    # every position up to n_ctx (TL's formula differs by about an ulp of the angle), also past
    # the 2,048 rows TL builds itself; the cached copy is the same, one table per layer type.
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("FVLENS_CACHE", str(tmp_path / "cache"))
    model_dir = tiny_hf_dir(tmp_path / family, family, max_position_embeddings=3000)
    model = load_model(model_dir)
    cached = load_model(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    pos = torch.arange(3000)[None]
    x = torch.zeros(1, 1, dtype=torch.float32)
    for loaded in (model, cached):
        for layer, block in enumerate(loaded.blocks):
            if family == "gemma3":
                cos, sin = hf.model.rotary_emb(x, pos, hf.config.layer_types[layer])
            else:
                cos, sin = hf.model.rotary_emb(x, pos)
            assert torch.equal(block.attn.rotary_sin, sin[0]), layer
            assert torch.equal(block.attn.rotary_cos, cos[0]), layer
    tables = {b.attn.rotary_sin.data_ptr() for b in cached.blocks}
    assert len(tables) == (2 if family == "gemma3" else 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_in_place_rms_fold_equals_transformer_lens(family, tmp_path):
    # The memory-lean fold must give TL's ProcessWeights result bit for bit.
    from transformers import AutoModelForCausalLM
    from transformer_lens.weight_processing import ProcessWeights

    from fvlens.models.convert import _state_dict
    from fvlens.models.processing import fold_rms_in_place

    model_dir = tiny_hf_dir(tmp_path / family, family)
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    cfg = tl_config(json.loads((model_dir / "config.json").read_text()), name=family,
                    fold_ln=True, default_prepend_bos=False)
    state = complete_state(cfg, _state_dict(hf, cfg))
    ref = ProcessWeights.process_weights(dict(state), cfg, fold_ln=True,
                                         center_writing_weights=False, center_unembed=False,
                                         fold_value_biases=False)
    ours = dict(state)
    assert fold_rms_in_place(cfg, ours)
    assert set(ours) == set(ref)
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key


def test_layer_norm_models_take_transformer_lens_path():
    from conftest import tiny_config
    from fvlens.models.processing import fold_rms_in_place

    cfg = tiny_config("gpt2", normalization_type="LNPre")
    assert not fold_rms_in_place(cfg, {})
