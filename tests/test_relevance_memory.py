"""AttnLRP's lean reads: the same relevance as reading every full pattern and every position's
logits, the target ranks of the same forward, and proof that nothing vocabulary-wide or
pattern-wide beyond the forward's own activations is kept."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny

from fvlens.evaluation import ranks_of
from fvlens.hooks import assert_no_hooks, frozen_parameters
from fvlens.attnlrp.relevance import _forward_backward, _times, explain_batch
from fvlens.attnlrp.rules import attnlrp_hooks

LEAN_RTOL = 1e-6  # lean vs full reads, float32: only the unembedding's reduction may differ


def _full_read_reference(model, tokens, targets, mask=None):
    """The previous explain_batch: full logits at every position, every pattern read whole."""
    n = model.cfg.n_layers
    inputs = [h for h in ("hook_embed", "hook_pos_embed") if h in model.hook_dict]
    names = inputs + [f"blocks.{i}.attn.hook_{k}" for k in ("pattern", "z") for i in range(n)]
    acts = {}

    def leaf(x, hook):
        return x.detach().requires_grad_(True)

    def read(x, hook):
        acts[hook.name] = x

    hooks = [(h, leaf) for h in inputs] + attnlrp_hooks(model) + [(h, read) for h in names]
    with frozen_parameters(model), torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(tokens, attention_mask=mask)
        target_logits = logits[torch.arange(len(targets)), -1, targets]
        grads = torch.autograd.grad(target_logits.sum(), [acts[h] for h in names])
    rel = {h: _times(acts[h].detach(), g) for h, g in zip(names, grads)}
    return {
        "tokens": sum(rel[h].sum(-1) for h in inputs),
        "attention": torch.stack([rel[f"blocks.{i}.attn.hook_pattern"][:, :, -1]
                                  for i in range(n)], 1),
        "heads": torch.stack([rel[f"blocks.{i}.attn.hook_z"][:, -1].sum(-1)
                              for i in range(n)], 1),
        "logits": target_logits.detach(),
        "ranks": ranks_of(logits[:, -1].detach(), targets),
    }


def _rel_err(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _padded_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 50, (3, 9), generator=g)
    mask = torch.ones_like(tokens)
    mask[1, :4] = 0
    mask[2, :2] = 0
    tokens[mask == 0] = 0
    return tokens, torch.tensor([3, 17, 41]), mask


@pytest.mark.parametrize("masked", [False, True])
def test_lean_reads_equal_full_reads(tiny_model, masked):
    tokens, targets, mask = _padded_batch()
    mask = mask if masked else None
    lean = explain_batch(tiny_model, tokens, targets, attention_mask=mask)
    full = _full_read_reference(tiny_model, tokens, targets, mask)
    assert_no_hooks(tiny_model)
    for field in ("tokens", "attention", "heads", "logits"):
        err = _rel_err(getattr(lean, field), full[field])
        assert err <= LEAN_RTOL, (field, err)
    assert torch.equal(lean.ranks, full["ranks"])


def test_ranks_count_larger_logits(tiny_llama):
    """Targets chosen as the 1st, 2nd and last logit get ranks 0, 1 and d_vocab - 1."""
    tokens, _, _ = _padded_batch(1)
    with torch.no_grad():
        order = tiny_llama(tokens)[:, -1].argsort(-1, descending=True)
    targets = torch.stack([order[0, 0], order[1, 1], order[2, -1]])
    rel = explain_batch(tiny_llama, tokens, targets)
    assert rel.ranks.tolist() == [0, 1, tiny_llama.cfg.d_vocab - 1]
    assert rel[1].rank == 1 and rel.ranks.dtype == torch.int64


def test_last_only_reads_one_position_and_passes_values_unchanged(tiny_llama):
    """Sliced reads are [.., 1, ..]; the forward downstream sees bit-exact activations."""
    model = tiny_llama
    tokens, targets, mask = _padded_batch(2)
    names = ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.1.hook_resid_mid"]
    seen = {}

    def keep(x, hook):
        seen.setdefault(hook.name, []).append(x.detach().clone())

    after = [("blocks.1.hook_attn_out", keep), ("blocks.2.hook_resid_post", keep)]
    full = _forward_backward(model, tokens, targets, names, mask, after)
    lean = _forward_backward(model, tokens, targets, names, mask, after, last_only=names[:2])
    for name, dim in zip(names[:2], (-2, 1)):
        assert lean.acts[name].shape[dim] == 1 and lean.grads[name].shape[dim] == 1
        last = full.acts[name].narrow(dim, tokens.shape[1] - 1, 1)
        assert torch.equal(lean.acts[name], last)
        torch.testing.assert_close(lean.grads[name],
                                   full.grads[name].narrow(dim, tokens.shape[1] - 1, 1),
                                   rtol=0, atol=0)
    assert lean.acts[names[2]].shape == full.acts[names[2]].shape
    for values in seen.values():
        assert torch.equal(values[0], values[1])
    with pytest.raises(ValueError, match="not among hook_names"):
        _forward_backward(model, tokens, targets, names[:1], mask, [], last_only=names[1:2])


def test_nothing_vocabulary_wide_or_full_gradient_is_kept(tiny_llama):
    """Autograd saves no [batch, pos, d_vocab] tensor (only the last position is unembedded)
    and explain_batch keeps no full-pattern gradient: every tensor autograd hands back for the
    patterns has one query row."""
    model = make_tiny("llama", d_vocab=997)  # a vocabulary larger than any other dimension
    tokens, targets, mask = _padded_batch(3)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        explain_batch(model, tokens, targets, attention_mask=mask)
    vocab_wide = [s for s in saved if model.cfg.d_vocab in s and s[:2] == tokens.shape]
    assert saved and not vocab_wide, vocab_wide
    n = model.cfg.n_layers
    patterns = [f"blocks.{i}.attn.hook_pattern" for i in range(n)]
    t = _forward_backward(model, tokens, targets, patterns, mask, [], last_only=patterns)
    assert all(t.grads[p].shape == (3, model.cfg.n_heads, 1, 9) for p in patterns)


@pytest.mark.slow
def test_lean_reads_equal_full_reads_on_embedded_model(smollm):
    model = smollm
    prompts = ["The capital of France is", "hot -> cold, big -> small, up ->"]
    rows = [model.to_tokens(p)[0] for p in prompts]
    width = max(len(r) for r in rows)
    tokens = torch.stack([torch.cat([r.new_zeros(width - len(r)), r]) for r in rows])
    mask = torch.stack([torch.cat([r.new_zeros(width - len(r)), torch.ones_like(r)])
                        for r in rows])
    targets = torch.tensor([int(model.to_tokens(t, prepend_bos=False)[0, 0])
                            for t in (" Paris", " down")])
    lean = explain_batch(model, tokens, targets, attention_mask=mask)
    full = _full_read_reference(model, tokens, targets, mask)
    for field in ("tokens", "attention", "heads", "logits"):
        err = _rel_err(getattr(lean, field), full[field])
        assert err <= LEAN_RTOL, (field, err)
    assert torch.equal(lean.ranks, full["ranks"])
