"""bfloat16 numerics on the CPU: what fvlens computes in bf16 stays close to float32.

Tolerances follow bf16's precision: 8 significant bits, a relative rounding of 2⁻⁸ ≈ 0.4% per
operation, accumulating over a few dozen operations per layer.
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny
from families import padded_batch
from fvlens.attnlrp import explain_batch
from fvlens.evaluation import last_logits
from fvlens.heads.aie import indirect_effects
from fvlens.hooks import assert_no_hooks
from fvlens.prompts import zero_shot_prompts
from fvlens.tasks import load_task

# Fast and reference AIE in bf16 differ by summation order: a few bf16 roundings of
# probabilities ≤ 1 (measured 4e-4 on these models).
BF16_PROB_ATOL = 2e-3
# AttnLRP head relevance bf16 vs float32, relative to the largest head (measured 1.0–1.2%).
BF16_RELEVANCE_RTOL = 5e-2


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_fast_aie_equals_reference_in_bf16(kind):
    model = make_tiny(kind, dtype=torch.bfloat16)
    batch = padded_batch()
    g = torch.Generator().manual_seed(1)
    mean_z = torch.randn(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head, generator=g)
    fast = indirect_effects(model, batch, mean_z, method="fast", progress=False)
    ref = indirect_effects(model, batch, mean_z, method="reference", progress=False)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, ref, atol=BF16_PROB_ATOL, rtol=0)
    ref32 = indirect_effects(make_tiny(kind), batch, mean_z, method="reference", progress=False)
    torch.testing.assert_close(ref, ref32, atol=BF16_PROB_ATOL, rtol=0)
    assert_no_hooks(model)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_attnlrp_in_bf16_accumulates_in_float32_and_keeps_the_head_ranking(kind):
    batch = padded_batch()
    args = (batch.tokens, batch.targets)
    r32 = explain_batch(make_tiny(kind), *args, attention_mask=batch.attention_mask)
    r16 = explain_batch(make_tiny(kind, dtype=torch.bfloat16), *args,
                        attention_mask=batch.attention_mask)
    assert r16.heads.dtype == torch.float32 and r16.tokens.dtype == torch.float32
    scale = r32.heads.abs().max()
    assert float((r16.heads - r32.heads).abs().max() / scale) < BF16_RELEVANCE_RTOL
    top32 = set(r32.heads.abs().mean(0).flatten().topk(5).indices.tolist())
    top16 = set(r16.heads.abs().mean(0).flatten().topk(5).indices.tolist())
    assert len(top32 & top16) >= 4
    # the explained logits themselves (order 1 on a random tiny model): a few bf16 roundings;
    # ranks are not compared, a random model's near-tied logits reorder under any rounding
    torch.testing.assert_close(r16.logits, r32.logits, atol=0.1, rtol=0)


def test_evaluation_is_float32_whatever_the_model_dtype(tiny_tok_model):
    model16 = make_tiny("llama", dtype=torch.bfloat16, tokenizer=True)
    batch = zero_shot_prompts(model16, load_task("antonym").pairs[:4])
    logits = last_logits(model16, batch)
    assert logits.dtype == torch.float32 and logits.device.type == "cpu"
    ref = last_logits(tiny_tok_model, batch)
    # logits of order 1 on a random tiny model: a few bf16 roundings each
    torch.testing.assert_close(logits, ref, atol=0.1, rtol=0)
