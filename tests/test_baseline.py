"""Baselines on the embedded model, and the `fvlens tasks` / `fvlens baseline` commands."""

from __future__ import annotations

import json

import pytest

from fvlens.cli import main
from fvlens.evaluation import baseline
from fvlens.tasks import load_task


def test_cli_tasks_lists_builtins(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "antonym" in out and "capitalize" in out and "pairs" in out


def test_cli_unknown_task_is_a_clear_error(capsys):
    assert main(["baseline", "--tasks", "antonymm", "--model", "nope-model"]) == 2
    assert "antonym" in capsys.readouterr().err


def test_cli_baseline_all_resolves_every_builtin_task(capsys):
    # the tasks are checked before the model loads: 'all' gets past them to the model error
    assert main(["baseline", "--tasks", "all", "--model", "nope-model"]) == 2
    err = capsys.readouterr().err
    assert "unknown model spec 'nope-model'" in err and "task" not in err.split("Accepted")[0]


@pytest.mark.slow
def test_icl_beats_zero_shot_on_capitalize(smollm):
    r = baseline(smollm, load_task("capitalize"), shots=10, n_test=30, modes=("zero_shot", "icl"),
                 progress=False)
    assert r["n"] == 30
    assert r["icl_top1"] >= 0.5 and r["zero_shot_top1"] <= 0.1


@pytest.mark.slow
def test_cli_baseline_writes_results(smollm, tmp_path, capsys):
    assert main(["baseline", "--tasks", "present-past", "--n-test", "12", "--out",
                 str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res) >= {"model", "settings", "versions", "tasks"}
    row = res["tasks"]["present-past"]
    assert row["n"] == 12 and {"zero_shot_top1", "icl_top1"} <= set(row)
    assert "present-past" in capsys.readouterr().out
