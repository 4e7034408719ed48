"""fvlens.results: the typed results.json schema round-trips and reads older files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fvlens.heads.scores import HeadScores
from fvlens.results import (Accuracy, Failure, RunResult, Steered, TaskResult,
                            wilson_interval)


def _task() -> TaskResult:
    scores = HeadScores(scores=torch.arange(6.0).view(2, 3), method="aie", tasks=("t",),
                        prompt_mode="icl", n_samples=4)
    return TaskResult(
        n_test=10, n=8, baselines={"zero_shot": Accuracy(top1=0.125, top3=0.25, mean_rank=3.5,
                                                         n=8),
                                   "icl": Accuracy(top1=0.8, top3=0.9, mean_rank=0.3, n=10)},
        mean_activation_prompts=20, mean_activation_accuracy=0.9,
        steered={"aie": {"fv": Steered(accuracy=Accuracy(top1=0.75, top3=1.0, mean_rank=0.4,
                                                         n=8),
                                       layer=1, layer_sweep={0: 0.1, 1: 0.7},
                                       failures=(Failure(input="a", target="A",
                                                         prediction=" a", rank=2),)),
                         "dfv": Steered(accuracy=Accuracy(top1=0.5, n=8), scale=2.0,
                                        scale_sweep={1.0: 0.2, 2.0: 0.6})}},
        heads={"aie": ((1, 2), (0, 1))}, head_scores={"aie": scores},
        k_sweep={"aie": {"fv": {5: 0.5, 10: 0.7}}}, flags=("small test set: 8 queries",),
        n_multi_token_targets=0, extra={"custom": [1, 2]})


def test_round_trip_is_exact():
    run = RunResult(model="m", settings={"k": 2}, versions={"fvlens": "x"}, machine={},
                    tasks={"t": _task(), "s": TaskResult(skipped="why")},
                    timing={"aie": {"samples": 4}}, seconds=1.5, global_tasks=("t",),
                    extra={"note": "kept"})
    d = json.loads(json.dumps(run.to_json(), allow_nan=False))
    again = RunResult.from_json(d)
    assert again.to_json() == d
    t = again.tasks["t"]
    assert t.steered["aie"]["fv"].layer == 1 and t.steered["aie"]["fv"].layer_sweep == {0: 0.1,
                                                                                        1: 0.7}
    assert t.steered["aie"]["dfv"].scale_sweep == {1.0: 0.2, 2.0: 0.6}
    assert t.steered["aie"]["fv"].failures[0].rank == 2
    assert torch.equal(t.head_scores["aie"].scores, torch.arange(6.0).view(2, 3))
    assert t.k_sweep == {"aie": {"fv": {5: 0.5, 10: 0.7}}} and again.global_tasks == ("t",)
    assert d["tasks"]["t"]["zero_shot_top1"] == 0.125 and d["tasks"]["t"]["custom"] == [1, 2]
    assert d["tasks"]["t"]["steered"]["aie"]["fv"]["top1_ci95"] == list(wilson_interval(6, 8))


def test_reads_a_baseline_file_and_an_older_run_file():
    older = {"model": "x", "tasks": {"cap": {"n": 3, "zero_shot_top1": 0.0, "icl_top1": 1.0,
                                            "steered": {"aie": {"fv": {"top1": 0.5, "layer": 2,
                                                                       "layer_sweep": {"2": 0.5}}}},
                                            "failures": {"aie": {"fv": []}}}}}
    run = RunResult.from_json(older)
    cap = run.tasks["cap"]
    assert cap.baselines["icl"].top1 == 1.0 and cap.baselines["icl"].n is None
    assert cap.steered["aie"]["fv"].accuracy.ci95 is None
    with pytest.raises(ValueError, match="JSON object"):
        RunResult.from_json([1, 2])


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)   # standard textbook value: [0.490, 0.943]
    assert math.isclose(lo, 0.4902, abs_tol=1e-4) and math.isclose(hi, 0.9433, abs_tol=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
