"""The two extra embedded models against Hugging Face (slow: real weights, skipped when absent).

CI installs their parts (.ci/run). Each test loads the model through ``load_model(name)``
(assembling the parts and converting on the first run, then from the cache) and the HF model
from the same assembled GGUF file, and compares log-probs position by position.
"""

from __future__ import annotations

import pytest
import torch

from fvlens.models import EMBEDDED_MODELS, embedded_gguf_path, fingerprint, load_model
from fvlens.models.embedded import missing_parts

# float32 on both sides; the gap is kernel order (fused QKV, folded norm gains, GQA) over 18-24
# layers. Measured (2-core CPU): Qwen ≤ 7.2e-5 on these prompts; Gemma 3 8.6e-5 below its
# 512-token window and 7.6e-5 at positions 512-900 (with TL's own rotary formula it was 2.6e-4
# at 512-768 and 4.9e-4 at 768-1100, growing with position: fvlens.models.rotary). 2.5e-4 is
# about 3x the measured gap and below what that rotary regression gives.
QWEN_LOGPROB_ATOL = 2.5e-4
GEMMA_LOGPROB_ATOL_IN_WINDOW = 2.5e-4
GEMMA_LOGPROB_ATOL_BEYOND_WINDOW = 2.5e-4

PROMPTS = [
    "Q: hot\nA: cold\n\nQ: big\nA:",
    "Translate to French: cat -> chat, dog ->",
    "def add(a, b):\n    return",
]


def _needs(name: str):
    model = EMBEDDED_MODELS[name]
    return pytest.mark.skipif(bool(missing_parts(model)), reason=model.install_command)


def _hf(name: str):
    from transformers import AutoModelForCausalLM

    path = embedded_gguf_path(name)
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                dtype=torch.float32).eval()


def _max_diff(model, hf, tokens: torch.Tensor) -> torch.Tensor:
    """Per-position max |log p_ours - log p_hf| over the vocabulary."""
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        ref = hf(tokens).logits.log_softmax(-1)
    return (ours - ref).abs().amax(-1)[0]


@pytest.fixture(scope="module")
def qwen():
    model = load_model("qwen2.5-coder-0.5b", device="cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def gemma():
    model = load_model("gemma-3-270m", device="cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.slow
@_needs("qwen2.5-coder-0.5b")
def test_qwen_matches_hf(qwen):
    assert qwen.cfg.original_architecture == "Qwen2ForCausalLM"
    assert (qwen.cfg.n_layers, qwen.cfg.n_heads, qwen.cfg.n_key_value_heads,
            qwen.cfg.d_model) == (24, 14, 2, 896)
    hf = _hf("qwen2.5-coder-0.5b")
    for prompt in PROMPTS:
        tokens = torch.tensor([qwen.tokenizer(prompt, add_special_tokens=False).input_ids])
        assert _max_diff(qwen, hf, tokens).max().item() < QWEN_LOGPROB_ATOL, prompt


@pytest.mark.slow
@_needs("gemma-3-270m")
def test_gemma_matches_hf_within_and_beyond_the_window(gemma):
    cfg = gemma.cfg
    assert cfg.original_architecture == "Gemma3ForCausalLM" and cfg.window_size == 512
    assert cfg.attn_types.count("global") == 3 and cfg.use_qk_norm
    hf = _hf("gemma-3-270m")
    text = " ".join(PROMPTS) * 120
    ids = gemma.tokenizer(text, add_special_tokens=False).input_ids[:899]
    tokens = torch.tensor([[gemma.tokenizer.bos_token_id] + ids])
    diff = _max_diff(gemma, hf, tokens)
    assert diff[:512].max().item() < GEMMA_LOGPROB_ATOL_IN_WINDOW
    assert diff[512:].max().item() < GEMMA_LOGPROB_ATOL_BEYOND_WINDOW


@pytest.mark.slow
@_needs("gemma-3-270m")
def test_gemma_fingerprint_is_stable_across_dtypes(gemma):
    from fvlens.models import fingerprint_mismatch

    bf16 = load_model("gemma-3-270m", device="cpu", dtype=torch.bfloat16)
    assert bf16.fvlens_meta["from_cache"]
    assert fingerprint_mismatch(fingerprint(gemma), fingerprint(bf16)) is None
