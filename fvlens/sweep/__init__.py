"""Sweeps: a TOML grid of ``fvlens run`` settings, run as independent submitit jobs (local or
SLURM), each into its own content-addressed folder, then merged into one table and report."""

from fvlens.sweep.grid import Grid, Job, ModelSpec, load_grid, parse_grid
from fvlens.sweep.jobs import ExecutorConfig, LaunchReport, is_done, job_dir, launch, run_job
from fvlens.sweep.merge import MergedSweep, format_table, head_overlap, merge, write_merged

__all__ = [
    "ExecutorConfig",
    "Grid",
    "Job",
    "LaunchReport",
    "MergedSweep",
    "ModelSpec",
    "format_table",
    "head_overlap",
    "is_done",
    "job_dir",
    "launch",
    "load_grid",
    "merge",
    "parse_grid",
    "run_job",
    "write_merged",
]
