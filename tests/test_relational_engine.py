"""The fine-tuning engine: whole-answer scoring, cached-prefix suffix runs equal full forward
passes, many vectors in one batch equal separate runs, the ICL task-vector start."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fvlens.evaluation import evaluate
from fvlens.hooks import assert_no_hooks
from fvlens.prompts import zero_shot_prompts
from fvlens.relational.answers import answer_batch, answer_logits, score_answers
from fvlens.relational.finetune import FinetuneConfig, finetune, finetune_many, split_pairs
from fvlens.relational.objective import ScoredSplit, score_vector
from fvlens.relational.taskvec import screen_layers, screen_many, task_vectors
from fvlens.steering import DistributedFV, FunctionVector
from fvlens.tasks import load_task

ATOL = 1e-4  # float32 log-probabilities of one forward pass computed two ways
PAIRS = list(load_task("english-french").pairs[:7])  # answers of 1 to 4 tiny-tokenizer tokens


def _prompts(pairs):
    return [f"Q: {p.input}\nA:" for p in pairs]


def test_answer_batch_positions(tiny_tok_model):
    model = tiny_tok_model
    b = answer_batch(model, _prompts(PAIRS), [p.output for p in PAIRS], target="full")
    assert len({len(a) for a in b.answers}) > 1, "the test needs answers of several lengths"
    width = b.tokens.shape[1]
    for i, (p, a) in enumerate(zip(PAIRS, b.answers)):
        ids = model.tokenizer(f"Q: {p.input}\nA:", add_special_tokens=False)["input_ids"]
        assert int(b.edit[i]) == width - len(a)
        assert b.tokens[i, int(b.edit[i])].item() == ids[-1]
        assert b.tokens[i, width - len(a) + 1:].tolist() == list(a[:-1])
    first = answer_batch(model, _prompts(PAIRS), [p.output for p in PAIRS], target="first")
    assert (first.edit == first.tokens.shape[1] - 1).all()
    assert first.first.tolist() == b.first.tolist()


def test_first_token_scores_equal_evaluate(tiny_tok_model):
    model = tiny_tok_model
    v = FunctionVector(vector=torch.randn(model.cfg.d_model), layer=1)
    sc = score_vector(model, v, PAIRS, target="first")
    ev = evaluate(model, zero_shot_prompts(model, PAIRS), fwd_hooks=v.hooks())
    assert sc.first_top1.tolist() == ev.correct.tolist()
    torch.testing.assert_close(sc.logprob, ev.target_probs.log(), atol=ATOL, rtol=0)
    assert_no_hooks(model)


def test_exact_match_is_greedy_decoding(tiny_tok_model):
    """Whole-answer exact match equals: every answer token is the argmax given the previous."""
    model = tiny_tok_model
    v = torch.randn(model.cfg.d_model) * 4
    b = answer_batch(model, _prompts(PAIRS), [p.output for p in PAIRS], target="full")
    sc = score_answers(*answer_logits(model, b, target="full", vector=v, layer=1), len(b))
    logits, rows, tok = answer_logits(model, b, target="full", vector=v, layer=1)
    hit = logits.argmax(-1) == tok
    for i in range(len(b)):
        assert bool(sc.exact[i]) == bool(hit[rows == i].all())
        assert bool(sc.first_top1[i]) == bool(hit[rows == i][0])


@pytest.mark.parametrize("target", ["first", "full"])
def test_suffix_cache_equals_a_full_forward(tiny_tok_model, target):
    model = tiny_tok_model
    v = torch.randn(model.cfg.d_model) * 3
    fv = FunctionVector(vector=v, layer=1)
    split = ScoredSplit(model, PAIRS, target, start=2)
    fast = split.scores(fv, v)
    b = answer_batch(model, _prompts(PAIRS), [p.output for p in PAIRS], target=target)
    ref = score_answers(*answer_logits(model, b, target=target, vector=v, layer=1), len(b))
    torch.testing.assert_close(fast.logprob, ref.logprob, atol=ATOL, rtol=0)
    assert fast.exact.tolist() == ref.exact.tolist()
    rows = [5, 0, 3]
    sub = split.scores(fv, v, rows)
    torch.testing.assert_close(sub.logprob, ref.logprob[rows], atol=ATOL, rtol=0)
    assert_no_hooks(model)


def test_suffix_cache_dfv_and_low_edit_error(tiny_tok_model):
    model = tiny_tok_model
    dfv = DistributedFV(heads=((1, 0), (2, 3)), means=torch.randn(2, model.cfg.d_head))
    fast = ScoredSplit(model, PAIRS, "first", start=1).scores(dfv, dfv.means)
    b = answer_batch(model, _prompts(PAIRS), [p.output for p in PAIRS], target="first")
    with model.hooks(fwd_hooks=dfv.hooks()):
        ref = score_answers(*answer_logits(model, b, target="first"), len(b))
    torch.testing.assert_close(fast.logprob, ref.logprob, atol=ATOL, rtol=0)
    split = ScoredSplit(model, PAIRS, "first", start=2)
    with pytest.raises(ValueError, match="below"):
        split.suffix.resume({0: torch.zeros(model.cfg.d_model)})
    assert_no_hooks(model)


def test_finetune_many_equals_separate_runs(tiny_tok_model):
    model = tiny_tok_model
    cfg = FinetuneConfig(pairs=6, steps=5, batch_size=3, lr=0.1, init="zeros", layer=1,
                         n_val=4, n_test=4)
    names = ["capitalize", "antonym", "present-past"]
    together = finetune_many(model, names, cfg, progress=False)
    for name, t in zip(names, together):
        alone = finetune(model, name, cfg, progress=False)
        torch.testing.assert_close(t.vector.vector, alone.vector.vector, atol=1e-5, rtol=0)
        assert t.best_step == alone.best_step
        assert [h["val_top1"] for h in t.history] == [h["val_top1"] for h in alone.history]
        assert t.train_top1 == alone.train_top1
    # each job trained on its own pairs (its loss curve is its own)
    assert len({tuple(h["train_loss"] for h in t.history[1:]) for t in together}) == 3
    assert_no_hooks(model)


def test_full_target_lowers_the_whole_answer_loss(tiny_tok_model):
    model = tiny_tok_model
    cfg = FinetuneConfig(pairs=6, steps=15, batch_size=6, lr=0.2, init="zeros", layer=1,
                         target="full", n_val=4, n_test=4)
    res = finetune(model, "english-french", cfg, progress=False)
    losses = [h["train_loss"] for h in res.history[1:]]
    assert losses[-1] < losses[0] - 0.5  # the summed NLL of all answer tokens goes down
    with pytest.raises(ValueError, match="inject='fv'"):
        FinetuneConfig(inject="dfv", target="full")


def test_task_vectors_and_screen(tiny_tok_model):
    model = tiny_tok_model
    pairs = list(load_task("capitalize").pairs[:6])
    tv = task_vectors(model, pairs, shots=2)
    assert tv.shape == (model.cfg.n_layers, model.cfg.d_model)
    scr = screen_layers(model, tv, zero_shot_prompts(model, pairs[:3]))
    assert set(scr) == set(range(model.cfg.n_layers))
    cfg = FinetuneConfig(pairs=4, steps=1, batch_size=2, lr=1e-6, init="icl_mean", n_val=2,
                         n_test=2, tv_shots=2)
    res = finetune(model, "capitalize", cfg, progress=False)
    layer = min(res.layer_screen, key=lambda L: (-res.layer_screen[L]["top1"],
                                                 res.layer_screen[L]["mean_rank"], L))
    assert res.vector.layer == layer
    train, _, _ = split_pairs(load_task("capitalize"), cfg)
    torch.testing.assert_close(res.initial.vector, task_vectors(model, train[:4], shots=2)[layer])
    fixed = finetune(model, "capitalize", dataclasses.replace(cfg, layer=2), progress=False)
    assert fixed.vector.layer == 2 and fixed.layer_screen is None
    assert_no_hooks(model)


def test_screen_many_equals_one_screen_per_relation(tiny_tok_model):
    model = tiny_tok_model
    names = ("capitalize", "antonym")
    tvs = [task_vectors(model, list(load_task(n).pairs[:5]), shots=2) * 4 for n in names]
    vals = [zero_shot_prompts(model, list(load_task(n).pairs[5:5 + k])) for n, k in
            zip(names, (3, 4))]
    together = screen_many(model, tvs, vals)
    for tv, val, got in zip(tvs, vals, together):
        want = screen_layers(model, tv, val)
        assert got.keys() == want.keys()
        for layer in want:
            assert got[layer]["top1"] == want[layer]["top1"]
            assert abs(got[layer]["mean_rank"] - want[layer]["mean_rank"]) < 1e-6
