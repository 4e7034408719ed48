"""``fvlens sweep GRID.toml`` and ``fvlens sweep --merge DIR``.

``add_parser(subparsers)`` registers the subcommand on the ``fvlens`` parser; ``main(argv)``
runs it on its own (``python -m fvlens.cli.sweep``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["add_parser", "build_parser", "cmd_sweep", "main"]

DEFAULT_OUT = "runs/sweep"


def _slurm_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--slurm takes KEY=VALUE (e.g. account=proj), "
                                         f"got {text!r}")
    return key, value


def _configure(s: argparse.ArgumentParser) -> argparse.ArgumentParser:
    s.add_argument("grid", nargs="?", help="TOML grid file (see docs/sweep.md)")
    s.add_argument("--merge", metavar="DIR",
                   help="gather DIR's finished jobs: table, DIR/sweep.json, DIR/report.html")
    s.add_argument("--out", help=f"sweep folder (default {DEFAULT_OUT}/<grid name>)")
    s.add_argument("--executor", choices=("local", "slurm"), default="local")
    s.add_argument("--parallel", type=int, default=1,
                   help="jobs at a time (local processes; SLURM array parallelism)")
    s.add_argument("--partition", help="SLURM partition")
    s.add_argument("--gpus-per-job", type=int,
                   help="GPUs per job (default 1 when CUDA is visible, else 0)")
    s.add_argument("--cpus-per-job", type=int)
    s.add_argument("--mem-gb", type=int)
    s.add_argument("--threads-per-job", type=int,
                   help="torch threads per job (default: CPUs / --parallel locally, "
                        "--cpus-per-job on SLURM)")
    s.add_argument("--timeout-min", type=int, default=120)
    s.add_argument("--slurm", type=_slurm_option, action="append", default=[],
                   metavar="KEY=VALUE", help="extra SLURM parameter (repeatable), e.g. "
                   "account=proj, qos=normal, constraint=a100")
    s.add_argument("--wait", action="store_true",
                   help="SLURM: block until every job has finished (local always waits)")
    s.add_argument("--dry-run", action="store_true",
                   help="list the jobs and whether each is finished; submit nothing")
    s.set_defaults(func=cmd_sweep)
    return s


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``sweep`` on an ``add_subparsers()`` object; returns its parser."""
    return _configure(subparsers.add_parser(
        "sweep", help="run a grid of fvlens runs through submitit (local or SLURM); --merge"))


def build_parser() -> argparse.ArgumentParser:
    return _configure(argparse.ArgumentParser(prog="fvlens sweep",
                                              description=__doc__.splitlines()[0]))


def _merge(folder: str) -> int:
    from fvlens.sweep.merge import format_table, merge, write_merged

    merged = merge(folder)
    print(format_table(merged.rows))
    if merged.missing:
        print(f"{len(merged.missing)} job(s) not finished: {', '.join(merged.missing[:5])}"
              f"{' …' if len(merged.missing) > 5 else ''}")
    data, page = write_merged(merged, folder)
    print(f"wrote {data}\nwrote {page}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.merge:
        if args.grid:
            raise SystemExit("fvlens sweep: give either GRID.toml or --merge DIR, not both")
        return _merge(args.merge)
    if not args.grid:
        raise SystemExit("fvlens sweep: give a GRID.toml to run, or --merge DIR")
    from fvlens.sweep.grid import load_grid
    from fvlens.sweep.jobs import ExecutorConfig, is_done, job_dir, launch

    grid = load_grid(args.grid)
    out = Path(args.out or Path(DEFAULT_OUT) / Path(args.grid).stem)
    cfg = ExecutorConfig(executor=args.executor, parallel=args.parallel,
                         timeout_min=args.timeout_min, gpus_per_job=args.gpus_per_job,
                         cpus_per_job=args.cpus_per_job, mem_gb=args.mem_gb,
                         threads_per_job=args.threads_per_job,
                         partition=args.partition, slurm=tuple(args.slurm), wait=args.wait)
    if args.dry_run:
        from fvlens.sweep.merge import format_table

        rows = [j.label() | {"key": j.key, "done": is_done(job_dir(out, j))} for j in grid.jobs]
        print(format_table(rows, ["model", "task", "select", "inject", "k", "seed", "key",
                                  "done"]))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.toml").write_text(Path(args.grid).read_text(encoding="utf-8"))
    print(f"{len(grid)} jobs in {args.grid}; output in {out}")
    report = launch(grid.jobs, out, cfg)
    print(f"submitted {len(report.submitted)}, skipped {len(report.skipped)} finished")
    for key, error in report.failed.items():
        print(f"job {key} failed: {error} (log: {out / 'submitit'})")
    if not cfg.waits():
        ids = sorted(set(report.job_ids.values()))
        print(f"queued on SLURM: {', '.join(ids[:5])}{' …' if len(ids) > 5 else ''}; "
              f"merge when done: fvlens sweep --merge {out}")
        return 0
    if report.failed:
        return 1
    return _merge(str(out))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
