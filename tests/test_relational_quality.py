"""Vector quality: the pass rule, the diagnosis, the ICL reference, choosing candidates on
validation; bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from fvlens.evaluation import evaluate
from fvlens.hooks import assert_no_hooks
from fvlens.prompts import icl_prompts
from fvlens.relational.bank import build_bank, fit_relations
from fvlens.relational.finetune import FinetuneConfig, split_pairs
from fvlens.relational.quality import VectorQuality, icl_reference, passes, summarize
from fvlens.relational.stats import mean_ci, paired_difference
from fvlens.tasks import load_task


def _q(val, icl, train=1.0, **kw):
    return VectorQuality(name="r", layer=1, target="first", val_top1=val, icl_top1=icl,
                         n_val=10, train_top1=train, **kw)


def test_pass_rule():
    assert passes(0.5, 1.0) and passes(0.4, 0.8) and not passes(0.39, 0.8)
    assert not passes(0.0, 0.0), "a vector that gets nothing right never passes"
    assert passes(0.1, 0.0) and passes(0.2, 0.9, ratio=0.2)
    with pytest.raises(ValueError, match="ratio"):
        passes(0.5, 0.5, ratio=-1.0)
    graded = _q(0.0, 0.1, val_top5=0.3, icl_top5=0.5, metric="top5")
    assert graded.passes and not _q(0.0, 0.1, val_top5=0.3, icl_top5=0.5).passes
    assert _q(0.0, 0.1, val_top5=0.2, icl_top5=0.5, metric="top5").reason == "below_icl"
    with pytest.raises(ValueError, match="val_top5"):
        _q(0.0, 0.1, metric="top5")


def test_diagnosis_names_the_most_basic_cause():
    assert _q(0.6, 0.8).reason == "passes"
    assert _q(0.0, 0.0).reason == "icl_zero"
    assert _q(0.0, 0.5, train=0.2).reason == "underfit"
    assert _q(0.0, 0.5, train=0.9).reason == "no_transfer"
    assert _q(0.1, 0.5, train=0.9).reason == "below_icl"
    multi = _q(0.0, 0.3, details={"multi_token_val": 0.8, "icl": {"first": 0.3, "full": 0.1}})
    assert multi.reason == "no_transfer+multi_token"
    back = VectorQuality.from_json(multi.to_json())
    assert back == multi and multi.to_json()["passes"] is False
    s = summarize([_q(0.6, 0.8), _q(0.0, 0.0), _q(0.0, 0.5, train=0.2)])
    assert (s["n"], s["n_pass"]) == (3, 1)
    assert s["reasons"] == {"icl_zero": 1, "underfit": 1}


def test_icl_reference_equals_evaluate(tiny_tok_model):
    task = load_task("antonym")
    pairs = list(task.pairs[:12])
    ref = icl_reference(tiny_tok_model, pairs[:5], pairs[5:], shots=3, seed=2)
    ev = evaluate(tiny_tok_model, icl_prompts(tiny_tok_model, pairs[:5], pairs[5:], shots=3,
                                              seed=2))
    assert ref["first"] == ev.top1 and ref["shots"] == 3 and ref["n"] == 5
    assert ref["full"] <= ref["first"] + 1e-9  # the whole answer is right only if its start is
    assert_no_hooks(tiny_tok_model)


def test_fit_relations_chooses_on_validation(tiny_tok_model):
    model = tiny_tok_model
    cfg = FinetuneConfig(pairs=4, steps=3, batch_size=4, lr=0.2, init="zeros", n_val=4,
                         n_test=3, layer=1)
    tasks = ["capitalize", "antonym"]
    fitted = fit_relations(model, tasks, cfg, candidates="1,2", icl_shots=2, progress=False)
    for f, name in zip(fitted, tasks):
        c = f.candidates
        assert set(c) == {"layer 1", "layer 2"}
        best = max(c, key=lambda k: (c[k]["val_top1"], -c[k]["val_loss"]))
        assert f.quality.details["chosen"] == best and f.result.vector.layer == c[best]["layer"]
        assert f.quality.name == name and f.quality.n_val == 4
        train, val, test = split_pairs(load_task(name), cfg)
        assert f.quality.icl_top1 == icl_reference(model, val, train, shots=2)["first"]
        assert f.quality.test_top1 is not None
    common = fit_relations(model, tasks, cfg, candidates="1,2", common_layer=True,
                           icl_shots=2, progress=False)
    assert len({f.result.vector.layer for f in common}) == 1
    assert_no_hooks(model)


def test_build_bank_saves_quality(tiny_tok_model, tmp_path):
    from fvlens.relational.bank import RelationBank

    cfg = FinetuneConfig(pairs=4, steps=2, batch_size=4, lr=0.2, init="zeros", n_val=3,
                         n_test=2, layer=1)
    bank, fitted = build_bank(tiny_tok_model, ["capitalize"], tmp_path / "b", cfg,
                              candidates="1", progress=False)
    back = RelationBank.load(tmp_path / "b")
    assert back.quality[0] == fitted[0].quality == bank.quality[0]


def test_bootstrap_intervals():
    ones = np.ones(30)
    assert mean_ci(ones)["ci95"] == [1.0, 1.0]
    x = np.r_[np.ones(15), np.zeros(15)]
    r = mean_ci(x, n_boot=500, seed=1)
    assert r["mean"] == 0.5 and r["ci95"][0] < 0.5 < r["ci95"][1]
    assert mean_ci(x, n_boot=500, seed=1) == r
    d = paired_difference(ones, x, n_boot=500)
    assert d["diff"] == 0.5 and d["ci95"][0] > 0 and d["p_le_0"] == 0.0
    same = paired_difference(x, x, n_boot=100)
    assert same["diff"] == 0.0 and same["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference(ones, x[:5])
    assert mean_ci([1.0])["ci95"] is None


@pytest.mark.slow
def test_capitalize_vector_passes_on_the_embedded_model(smollm):
    """A zeros-start FV at layer 10, 12 full-batch steps: capitalize is a relation the model
    does in context, and its vector reaches at least half the ICL reference on validation;
    the cached-prefix scores equal a full forward pass on the real model too."""
    from fvlens.prompts import zero_shot_prompts
    from fvlens.relational.objective import score_vector

    cfg = FinetuneConfig(init="zeros", layer=10, steps=12, pairs=12, batch_size=12, n_val=12,
                         n_test=12)
    (f,) = fit_relations(smollm, ["capitalize"], cfg, candidates="10", progress=False)
    assert f.quality.icl_top1 >= 0.5 and f.quality.passes, f.quality.to_json()
    _, val, _ = split_pairs(load_task("capitalize"), cfg)
    fast = score_vector(smollm, f.result.vector, val)
    ev = evaluate(smollm, zero_shot_prompts(smollm, val), fwd_hooks=f.result.vector.hooks())
    assert fast.first_top1.tolist() == ev.correct.tolist()
    assert abs(float(fast.first_top1.float().mean()) - f.quality.val_top1) < 1e-6
    assert_no_hooks(smollm)
