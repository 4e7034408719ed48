"""Decoding vectors through the unembedding: top tokens, relation-word ranks, DFV heads."""

from __future__ import annotations

import pytest
import torch

from fvlens.hooks import assert_no_hooks
from fvlens.relational.decoding import (decode, decode_heads, dfv_residual, head_contributions,
                                        relation_word_ids, relation_word_rank, vector_logits)
from fvlens.steering import DistributedFV, FunctionVector

ATOL = 1e-5  # float32 sums of a few d_head × d_model products


def _vec(model, seed=0):
    return torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))


def test_decode_is_sorted_and_matches_logits(tiny_tok_model):
    v = _vec(tiny_tok_model)
    top = decode(tiny_tok_model, v, k=5)
    logits = vector_logits(tiny_tok_model, v)
    assert [t.rank for t in top] == list(range(5))
    assert top[0].id == int(logits.argmax())
    assert all(a.prob >= b.prob for a, b in zip(top, top[1:]))
    assert abs(top[0].prob - float(logits.softmax(-1).max())) < ATOL
    fv = FunctionVector(vector=v, layer=1)
    assert [t.id for t in decode(tiny_tok_model, fv, k=5)] == [t.id for t in top]
    assert_no_hooks(tiny_tok_model)


def test_decode_rejects_a_dfv_shaped_tensor(tiny_tok_model):
    # jaxtyping rejects it under pytest; without it the function's own check says what to do
    with pytest.raises((TypeError, ValueError)):
        vector_logits(tiny_tok_model, torch.zeros(2, tiny_tok_model.cfg.d_head))


def test_relation_word_rank_is_the_best_candidate_rank(tiny_tok_model):
    model = tiny_tok_model
    v = _vec(model, 3)
    logits = vector_logits(model, v)
    words = ["opposite", "past"]
    ids = relation_word_ids(model, words)
    out = relation_word_rank(model, v, words)
    for w in words:
        assert out["ranks"][w] == min(int((logits > logits[i]).sum()) for i in ids[w])
    assert out["best_rank"] == min(out["ranks"].values())
    assert out["ranks"][out["best_word"]] == out["best_rank"]
    with pytest.raises(ValueError, match="relation_words"):
        relation_word_rank(model, v, [])


def test_relation_word_rank_of_the_word_direction_is_high(tiny_tok_model):
    model = tiny_tok_model
    tid = relation_word_ids(model, ["past"])["past"][0]
    v = model.W_U[:, tid].detach() * 50
    assert relation_word_rank(model, v, ["past"])["best_rank"] < 5


def test_head_contributions_sum_to_the_function_vector(tiny_tok_model):
    model = tiny_tok_model
    cfg = model.cfg
    mean_z = torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head,
                         generator=torch.Generator().manual_seed(0))
    heads = [(0, 1), (2, 3), (1, 0)]
    dfv = DistributedFV.from_heads(model, mean_z, heads)
    fv = FunctionVector.from_heads(model, mean_z, heads)
    contrib = head_contributions(model, dfv)
    assert contrib.shape == (3, cfg.d_model)
    torch.testing.assert_close(dfv_residual(model, dfv), fv.vector, atol=ATOL, rtol=0)
    torch.testing.assert_close(contrib[1], mean_z[2, 3] @ model.blocks[2].attn.W_O[3].detach(),
                               atol=ATOL, rtol=0)
    rows = decode_heads(model, dfv, k=3, words=["past"])
    assert [r["head"] for r in rows] == heads
    assert all(len(r["top"]) == 3 and "relation" in r for r in rows)
