"""The main job: settings validation, layer/scale choice, and an end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch

from fvlens.cli import main
from fvlens.heads.scores import HeadScores
from fvlens.hooks import assert_no_hooks
from fvlens.plan import RunConfig, choose_layer, choose_scale, extract_vectors
from fvlens.prompts import zero_shot_prompts
from fvlens.results import RunResult
from fvlens.steering import DistributedFV, FunctionVector
from fvlens.tasks import load_task


@pytest.mark.parametrize("field,value,match", [
    ("prompt_mode", "chat", "prompt_mode"),
    ("select", ("magic",), "unknown selection"),
    ("inject", ("xfv",), "unknown injections"),
    ("heads", "all", "per-task"),
    ("k", 0, "k must be"),
])
def test_run_config_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**{field: value})


def test_choose_layer_picks_the_best_validation_layer(tiny_tok_model):
    task = load_task("antonym")
    val = zero_shot_prompts(tiny_tok_model, task.pairs[:6])
    cfg = tiny_tok_model.cfg
    # A vector that is large along the first target's unembedding only helps when added late.
    target = int(val.targets[0])
    v = 50 * tiny_tok_model.W_U[:, target].detach()
    fv = FunctionVector(vector=v)
    best, sweep = choose_layer(tiny_tok_model, fv, val)
    assert set(sweep) == set(range(cfg.n_layers))
    assert sweep[best] == max(sweep.values())
    assert_no_hooks(tiny_tok_model)


def test_choose_scale_reports_every_scale(tiny_tok_model):
    task = load_task("antonym")
    val = zero_shot_prompts(tiny_tok_model, task.pairs[:6])
    cfg = tiny_tok_model.cfg
    dfv = DistributedFV(heads=((0, 0),), means=torch.randn(1, cfg.d_head))
    best, sweep = choose_scale(tiny_tok_model, dfv, val, [1.0, 2.0])
    assert set(sweep) == {1.0, 2.0} and best in sweep


@pytest.mark.slow
def test_extract_vectors_on_embedded_model(smollm):
    vec = extract_vectors(smollm, "capitalize", select=("aie",), k=5, n_mean=12, n_samples=4,
                          n_val=8)
    fv = vec.fv["aie"]
    assert len(fv.heads) == 5 and 0 <= fv.layer < smollm.cfg.n_layers
    assert vec.layer_sweep["aie"][fv.layer] == max(vec.layer_sweep["aie"].values())
    assert isinstance(vec.scores["aie"], HeadScores) and vec.scores["aie"].n_samples == 4
    assert vec.dfv["aie"].means.shape == (5, smollm.cfg.d_head)
    assert_no_hooks(smollm)


@pytest.mark.slow
def test_cli_run_writes_results_with_all_combinations(smollm, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--tasks", "capitalize", "--select", "aie,attnlrp", "--k", "5",
                 "--samples", "4", "--n-test", "12", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    cap = res["tasks"]["capitalize"]
    assert set(cap["steered"]) == {"aie", "attnlrp"}
    for method in ("aie", "attnlrp"):
        assert set(cap["steered"][method]) == {"fv", "dfv"}
        assert len(cap["heads"][method]) == 5
        for inj in ("fv", "dfv"):
            entry = cap["steered"][method][inj]
            lo, hi = entry["top1_ci95"]
            assert entry["n"] == cap["n"] and lo <= entry["top1"] <= hi
    assert {"shared", "only_self", "only_other", "jaccard"} <= set(cap["head_overlap"])
    assert res["timing"]["aie"]["samples"] == 4 and res["timing"]["aie"]["samples_per_min"] > 0
    assert cap["zero_shot_top1"] <= 0.1 and cap["icl_top1"] >= 0.5
    assert RunResult.from_json(res).to_json() == res
    assert (out / "report.html").is_file()
