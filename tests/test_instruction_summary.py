"""benchmarks/instruction.py: the Wilson intervals, the baseline acceptance and the paired
bootstrap it reports, on synthetic results (no model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import instruction as summary  # noqa: E402

from fvlens.results import wilson_interval  # noqa: E402


@pytest.mark.parametrize(("k", "n"), [(0, 12), (4, 12), (12, 30), (23, 23), (1, 1)])
def test_wilson_equals_the_library_interval(k, n):
    # float32 top-1 values as results.json stores them
    p = float(__import__("numpy").float32(k / n))
    assert summary._wilson(p, n) == pytest.approx(wilson_interval(k, n), abs=1e-12)


def _baseline(instr: dict[str, float]) -> dict:
    return {"tasks": {name: {"n": 30, "zero_shot_top1": 0.0, "instruction_top1": v}
                      for name, v in instr.items()}}


def test_acceptance_needs_two_tasks_at_threshold():
    ok = summary.acceptance(_baseline({"capitalize": 0.3, "antonym": 0.5,
                                       "singular-plural": 0.1}))
    assert ok["holds"] and ok["met_on"] == ["capitalize", "antonym"]
    bad = summary.acceptance(_baseline({"capitalize": 0.29, "antonym": 0.5,
                                        "singular-plural": 0.1}))
    assert not bad["holds"] and bad["met_on"] == ["antonym"]
    assert bad["tasks"]["antonym"]["instruction_top1_ci95"] == list(wilson_interval(15, 30))


def test_paired_bootstrap_of_a_constant_difference_is_exact():
    # B right on every query A gets right plus 5 more of 20: every draw's difference is the
    # share of those 5 among the drawn queries, so the mean is 0.25 and the interval brackets it
    a = [0] * 10 + [3] * 10
    b = [0] * 15 + [3] * 5
    res = {"tasks": {"t": {"per_query": {"zero_shot": a, "aie/fv": a, "aie/dfv": b,
                                         "attnlrp/fv": a, "attnlrp/dfv": a}}}}
    out = summary.bootstrap(res, n_boot=2000)
    c = out["contrasts"]["dfv-fv (aie)"]
    assert c["per_task"]["t"]["diff"] == pytest.approx(0.25)
    lo, hi = c["mean_ci95"]
    assert 0.0 < lo < 0.25 < hi < 0.5
    assert c["share_of_draws_above_0"] > 0.99
    assert out["contrasts"]["dfv-fv (attnlrp)"]["mean_over_tasks"] == 0.0


def test_compare_runs_is_paired_and_refuses_other_queries():
    def run(dfv):
        return {"tasks": {"t": {"per_query": {"zero_shot": [3] * 4, "aie/fv": [0, 0, 3, 3],
                                              "aie/dfv": dfv}}}}
    out = summary.compare_runs(run([0, 0, 0, 3]), run([0, 3, 3, 3]), n_boot=500)
    assert out["combinations"]["aie/fv"]["mean_over_tasks"] == 0.0
    assert out["combinations"]["aie/fv"]["mean_ci95"] == [0.0, 0.0]
    assert out["combinations"]["aie/dfv"]["per_task"]["t"]["diff"] == pytest.approx(0.5)
    other = run([0] * 4)
    other["tasks"]["t"]["per_query"]["zero_shot"] = [0, 3, 3, 3]
    with pytest.raises(ValueError, match="different test queries"):
        summary.compare_runs(run([0] * 4), other)
