"""Running a grid's jobs through submitit: locally by default, on SLURM on a cluster.

Each job has its own folder ``OUT/jobs/<key>/`` (``key`` = content hash of its settings and
the fvlens version): ``job.json`` is written when it is submitted and ``results.json`` when it
has finished (atomically, ``fvlens.provenance.write_results``). A job whose ``results.json``
exists is never submitted again, so rerunning a sweep resumes it. submitit's own logs and
pickles go to ``OUT/submitit/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fvlens.sweep.grid import Job

__all__ = ["EXECUTORS", "ExecutorConfig", "LaunchReport", "job_dir", "is_done", "launch",
           "run_job"]

EXECUTORS = ("local", "slurm")
JOB_FILE = "job.json"
RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecutorConfig:
    """Where and how jobs run.

    ``parallel`` is the local executor's number of jobs at a time (it starts one process per
    job) and SLURM's array parallelism; ``gpus_per_job`` defaults to 0 locally when no CUDA
    device is visible (submitit's local executor hides the GPUs it does not hand out) and to 1
    otherwise; ``threads_per_job`` (torch threads) defaults locally to the CPU count divided by
    ``parallel``, so that parallel jobs do not oversubscribe the cores, and on SLURM to
    ``cpus_per_job``; ``slurm`` holds extra ``slurm_*`` parameters for ``update_parameters``.
    """

    executor: str = "local"
    parallel: int = 1
    timeout_min: int = 120
    gpus_per_job: int | None = None
    cpus_per_job: int | None = None
    mem_gb: int | None = None
    threads_per_job: int | None = None
    partition: str | None = None
    slurm: tuple[tuple[str, Any], ...] = ()
    wait: bool | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; choose from {EXECUTORS}")
        if self.parallel < 1 or self.timeout_min < 1:
            raise ValueError("parallel and timeout_min must be ≥ 1")
        if self.executor == "local" and (self.partition or self.slurm):
            raise ValueError("--partition and slurm options need --executor slurm")

    def threads(self) -> int | None:
        """torch threads of each job (None: torch's default)."""
        if self.threads_per_job is not None:
            return self.threads_per_job
        if self.executor == "local":
            return max(1, (os.cpu_count() or 1) // self.parallel)
        return self.cpus_per_job

    def waits(self) -> bool:
        """Whether ``launch`` blocks until every job is done (local: always)."""
        return True if self.executor == "local" else bool(self.wait)

    def parameters(self) -> dict[str, Any]:
        """Keywords for ``submitit.AutoExecutor.update_parameters``."""
        gpus = self.gpus_per_job
        if gpus is None:
            import torch

            gpus = 1 if torch.cuda.is_available() else 0
        params: dict[str, Any] = {"timeout_min": self.timeout_min, "gpus_per_node": gpus,
                                  "name": "fvlens-sweep", "tasks_per_node": 1, "nodes": 1}
        if self.cpus_per_job is not None:
            params["cpus_per_task"] = self.cpus_per_job
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.executor == "slurm":
            params["slurm_array_parallelism"] = self.parallel
            if self.partition:
                params["slurm_partition"] = self.partition
            params |= {k if k.startswith("slurm_") else f"slurm_{k}": v for k, v in self.slurm}
        return params


@dataclasses.dataclass(frozen=True, kw_only=True)
class LaunchReport:
    """What ``launch`` did: job keys submitted, skipped (already finished) and failed."""

    submitted: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: dict[str, str]
    job_ids: dict[str, str]


def job_dir(out: str | Path, job: Job) -> Path:
    """The content-addressed folder of ``job`` under a sweep's output folder."""
    return Path(out) / "jobs" / job.key


def is_done(folder: str | Path) -> bool:
    """Whether the job in ``folder`` has finished (its results.json exists)."""
    return (Path(folder) / RESULTS_FILE).is_file()


def _write_job_file(folder: Path, job: Job) -> None:
    from fvlens import __version__

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / JOB_FILE
    if not path.is_file():
        record = {"key": job.key, "fvlens": __version__, "label": job.label(),
                  "job": job.to_json(), "settings": job.settings()}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1, default=list))
        tmp.replace(path)


def run_job(folder: str, threads: int | None = None) -> str:
    """Run the job described by ``folder/job.json``; write ``folder/results.json``.

    What submitit executes, in the job's own process. A finished job returns at once.

    Args:
        folder: the job's folder.
        threads: torch threads for this process (None: torch's default).

    Returns:
        The path of the results.json.
    """
    from fvlens.models import load_model
    from fvlens.pipeline import run
    from fvlens.provenance import write_results

    path = Path(folder)
    if is_done(path):
        return str(path / RESULTS_FILE)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    record = json.loads((path / JOB_FILE).read_text())
    job = Job.from_json(record["job"])
    if job.key != record["key"]:
        raise RuntimeError(f"{path / JOB_FILE} describes job {job.key}, not {record['key']}: "
                           f"the fvlens version or the RunConfig defaults changed; rerun the "
                           f"sweep to get a new folder")
    model = load_model(job.model.spec, **job.model.load_kwargs())
    res = run(model, job.run_config(), progress=False)
    results = res.to_json() if hasattr(res, "to_json") else res
    results["model"] = job.model.spec
    results["sweep"] = {"key": job.key, "label": job.label(), "job": job.to_json()}
    return str(write_results(path, results))


def _executor(out: Path, cfg: ExecutorConfig):
    try:
        import submitit
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("fvlens sweep runs jobs through submitit: pip install 'fvlens[sweep]' "
                          "(or pip install 'submitit>=1.5')") from None
    executor = submitit.AutoExecutor(folder=out / "submitit", cluster=cfg.executor)
    executor.update_parameters(**cfg.parameters())
    return executor


def launch(jobs: Sequence[Job], out: str | Path, cfg: ExecutorConfig | None = None
           ) -> LaunchReport:
    """Submit every unfinished job of ``jobs`` through submitit.

    Args:
        jobs: the grid's jobs.
        out: the sweep's output folder (jobs go to ``out/jobs/<key>/``).
        cfg: executor settings; default the local executor, one job at a time.

    Returns:
        LaunchReport. Locally (or with ``wait``) the jobs have finished when it returns, and a
        failed job's error is in ``failed``; on SLURM without ``wait`` they are queued.
    """
    cfg = cfg or ExecutorConfig()
    out = Path(out)
    pending, skipped = [], []
    for job in jobs:
        folder = job_dir(out, job)
        _write_job_file(folder, job)
        (skipped if is_done(folder) else pending).append((job.key, folder))
    report = LaunchReport(submitted=tuple(k for k, _ in pending),
                          skipped=tuple(k for k, _ in skipped), failed={}, job_ids={})
    if not pending:
        return report
    executor = _executor(out, cfg)
    failed: dict[str, str] = {}
    job_ids: dict[str, str] = {}
    # The local executor starts a process per submitted job at once: submit in waves of
    # ``parallel``. SLURM gets one job array and throttles it with slurm_array_parallelism.
    waves = ([pending[i:i + cfg.parallel] for i in range(0, len(pending), cfg.parallel)]
             if cfg.executor == "local" else [pending])
    for wave in waves:
        with executor.batch():
            handles = [(key, executor.submit(run_job, str(folder), cfg.threads()))
                       for key, folder in wave]
        for key, handle in handles:
            job_ids[key] = str(handle.job_id)
        if cfg.waits():
            failed |= _wait(handles)
    return dataclasses.replace(report, failed=failed, job_ids=job_ids)


def _wait(handles: list[tuple[str, Any]]) -> dict[str, str]:
    """Wait for submitted jobs; their errors by key. Interrupted, cancel what still runs
    (local jobs would otherwise outlive this process)."""
    failed = {}
    try:
        for key, handle in handles:
            try:
                handle.result()
            except Exception as err:  # noqa: BLE001 - one job's failure must not stop the rest
                lines = str(err).strip().splitlines() or [type(err).__name__]
                failed[key] = lines[-1]
    except BaseException:
        for _, handle in handles:
            if not handle.done():
                handle.cancel(check=False)
        raise
    return failed
