"""Cost of `fvlens run` with its defaults: wall and CPU time, and the forward work per task.

Runs the main job (the README's main command, in-process) on the embedded model and counts,
at ``hook_embed``, the prompt rows embedded (one per row of every pass that starts from the
tokens) and the model calls (every ``model(...)``, resumed passes included). Works with any
fvlens tree on PYTHONPATH, old (``run`` returns a dict) or new (a ``RunResult``), so the same
program measures a change before and after::

    python benchmarks/run_cost.py --out benchmarks/results/run_cost.json
    PYTHONPATH=/path/to/old/tree python benchmarks/run_cost.py --out /tmp/before.json

CPU time is the process's own (user + system), which a busy shared machine distorts less than
wall time; both are written, with the torch thread count.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import time
from pathlib import Path


def _revision(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tasks", default=None, help="comma list (default: fvlens run's)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import fvlens
    from fvlens import pipeline
    from fvlens.models import load_model
    from fvlens.provenance import machine, versions

    config_cls = getattr(pipeline, "RunConfig")
    cfg = config_cls(tasks=tuple(args.tasks.split(","))) if args.tasks else config_cls()
    model = load_model()
    counts = {"rows_embedded": 0, "embed_passes": 0, "model_calls": 0}

    def on_embed(x, hook):
        counts["rows_embedded"] += x.shape[0]
        counts["embed_passes"] += 1

    def on_call(module, call_args, call_kwargs):
        counts["model_calls"] += 1

    handle = model.register_forward_pre_hook(on_call, with_kwargs=True)
    t0, c0 = time.perf_counter(), time.process_time()
    with model.hooks(fwd_hooks=[("hook_embed", on_embed)]):
        res = pipeline.run(model, cfg, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    handle.remove()
    res = res.to_json() if hasattr(res, "to_json") else res
    summary = {}
    for name, rec in res["tasks"].items():
        row = {k: rec.get(k) for k in ("n", "zero_shot_top1", "icl_top1")}
        for method, injections in (rec.get("steered") or {}).items():
            for inj, out in injections.items():
                row[f"{method}/{inj}"] = out["top1"]
        summary[name] = row
    n_tasks = len(cfg.tasks)
    out = {"fvlens_tree": str(Path(fvlens.__file__).parent.parent),
           "revision": _revision(Path(fvlens.__file__).parent.parent),
           "settings": {"tasks": list(cfg.tasks), "threads": args.threads},
           "wall_seconds": wall, "cpu_seconds": cpu,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
           "counts": counts, "per_task": {k: v / n_tasks for k, v in counts.items()},
           "results": summary, "versions": versions(), "machine": machine()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("wall_seconds", "cpu_seconds", "per_task")}, indent=1))


if __name__ == "__main__":
    main()
