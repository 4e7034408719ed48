"""Causal mediation: the fast path equals the reference path; self-patching has no effect."""

from __future__ import annotations

import pytest
import torch
from families import padded_batch

from fvlens.activations import last_token_head_activations, mean_head_activations
from fvlens.heads.aie import (_indirect_effects_kv_cache, _shared_prefix_supported,
                              indirect_effects, indirect_effects_fast,
                              indirect_effects_reference)
from fvlens.hooks import assert_no_hooks
from fvlens.batch import PromptBatch

# Fast and reference compute the same function with different batch shapes and summation
# order (einsum over recorded keys vs TransformerLens's attention): float32 round-off only.
FAST_VS_REFERENCE_ATOL = 1e-6


def random_batch(n: int = 3, lengths=(7, 5, 9), vocab: int = 50, seed: int = 0) -> PromptBatch:
    return padded_batch(tuple(lengths[:n]), vocab=vocab, seed=seed)


def test_fast_equals_reference(tiny_model):
    batch = random_batch()
    g = torch.Generator().manual_seed(1)
    cfg = tiny_model.cfg
    mean_z = torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head, generator=g)
    ref = indirect_effects_reference(tiny_model, batch, mean_z, progress=False)
    fast = indirect_effects_fast(tiny_model, batch, mean_z, batch_size=2, progress=False)
    assert ref.shape == (3, cfg.n_layers, cfg.n_heads)
    assert ref.abs().max() > 1e-3  # the patches do something
    torch.testing.assert_close(fast, ref, atol=FAST_VS_REFERENCE_ATOL, rtol=0)
    assert_no_hooks(tiny_model)


def test_row_patches_equal_one_head_patches(tiny_model):
    """Row r patched at head heads[r] gives row r of the batch patched at that head alone."""
    from fvlens.heads.patching import patch_head_hooks, row_patch_hooks

    batch = random_batch(n=1, lengths=(6,))
    cfg = tiny_model.cfg
    heads = torch.arange(cfg.n_heads)
    values = torch.randn(cfg.n_heads, cfg.d_head, generator=torch.Generator().manual_seed(4))
    tokens = batch.tokens.repeat(cfg.n_heads, 1)
    with torch.no_grad():
        with tiny_model.hooks(fwd_hooks=row_patch_hooks(1, heads, values)):
            rows = tiny_model(tokens)[:, -1]
        for h in range(cfg.n_heads):
            with tiny_model.hooks(fwd_hooks=patch_head_hooks(1, h, values[h])):
                one = tiny_model(batch.tokens)[0, -1]
            torch.testing.assert_close(rows[h], one, atol=FAST_VS_REFERENCE_ATOL, rtol=0)
    assert not torch.allclose(rows[0], rows[1])  # different heads, different outputs
    from jaxtyping import TypeCheckError

    # the shapes disagree: jaxtyping's check (active in the tests) or the function's own
    with pytest.raises((ValueError, TypeCheckError)):
        row_patch_hooks(1, heads, values[:1])
    assert_no_hooks(tiny_model)


def test_kv_cache_fallback_equals_reference(tiny_model):
    batch = random_batch(seed=3)
    cfg = tiny_model.cfg
    mean_z = torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head,
                         generator=torch.Generator().manual_seed(2))
    ref = indirect_effects_reference(tiny_model, batch, mean_z, progress=False)
    with torch.no_grad():
        kv = _indirect_effects_kv_cache(tiny_model, batch, mean_z, batch_size=2, progress=False)
    torch.testing.assert_close(kv, ref, atol=FAST_VS_REFERENCE_ATOL, rtol=0)


def test_both_tiny_architectures_take_the_shared_prefix_path(tiny_model):
    assert _shared_prefix_supported(tiny_model) is None


def test_self_patch_has_zero_effect(tiny_model):
    """Patching each head of the clean prompt with its own clean activation changes nothing."""
    batch = random_batch(n=1, lengths=(8,))
    z, _ = last_token_head_activations(tiny_model, batch)
    for method in ("fast", "reference"):
        cie = indirect_effects(tiny_model, batch, z[0], method=method, progress=False)
        assert cie.abs().max() < 1e-6


def test_unknown_method(tiny_llama):
    cfg = tiny_llama.cfg
    with pytest.raises(ValueError, match="fast.*reference"):
        indirect_effects(tiny_llama, random_batch(),
                         torch.zeros(cfg.n_layers, cfg.n_heads, cfg.d_head), method="slow")


def test_mean_head_activations_only_correct(tiny_model):
    batch = random_batch(n=3)
    z, correct = last_token_head_activations(tiny_model, batch)
    assert z.shape == (3, tiny_model.cfg.n_layers, tiny_model.cfg.n_heads, tiny_model.cfg.d_head)
    torch.testing.assert_close(mean_head_activations(tiny_model, batch, only_correct=False),
                               z.mean(0))
    if not correct.any():
        with pytest.raises(ValueError, match="none of the 3"):
            mean_head_activations(tiny_model, batch)


def test_activations_are_padding_safe(tiny_model):
    batch = random_batch(n=3)
    z, _ = last_token_head_activations(tiny_model, batch)
    single, _ = last_token_head_activations(tiny_model, batch.select([1]))
    torch.testing.assert_close(single[0], z[1], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_fast_equals_reference_on_embedded_model(smollm):
    from fvlens.prompts import icl_prompts
    from fvlens.tasks import load_task

    task = load_task("capitalize")
    train, _ = task.split(seed=0)
    corrupted = icl_prompts(smollm, train.pairs[:2], train, shots=4, seed=1, shuffle_labels=True)
    cfg = smollm.cfg
    mean_z = 0.5 * torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head,
                               generator=torch.Generator().manual_seed(0))
    fast = indirect_effects_fast(smollm, corrupted, mean_z, progress=False)
    # The reference on a few heads only (one full forward per head is slow).
    from fvlens.heads.patching import patch_head_hooks, target_probs
    from fvlens.forward import forward_last as _forward_last

    with torch.no_grad():
        base = target_probs(_forward_last(smollm, corrupted.tokens, corrupted.attention_mask),
                             corrupted.targets)
        for layer, head in [(0, 0), (12, 4), (29, 8)]:
            with smollm.hooks(fwd_hooks=patch_head_hooks(layer, head, mean_z[layer, head])):
                p = target_probs(_forward_last(smollm, corrupted.tokens,
                                                corrupted.attention_mask), corrupted.targets)
            torch.testing.assert_close(fast[:, layer, head], p - base, atol=1e-5, rtol=0)
    assert_no_hooks(smollm)
