"""`fvlens run` in float32 and in bfloat16 on the CPU: how far the steered numbers move.

Runs the command line twice, the same settings but ``--dtype`` (default: ``--tasks capitalize
--samples 8``, the scale issue's acceptance run), and writes per task and per method ×
injection the steered top-1 of each dtype and their difference, the zero-shot and reference
baselines, how many of the selected heads the two runs share, and each run's wall time::

    python benchmarks/dtype_run.py --out benchmarks/results/dtype_run.json

The two runs see the same prompts (the same seed), so a difference comes from the dtype alone:
bf16 rounds every activation to 8 significant bits, which can move a head across the top-K
boundary or a test query across the argmax.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fvlens.provenance import machine, versions

DTYPES = ("float32", "bfloat16")


def _run(dtype: str, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "fvlens.cli", "run", "--dtype", dtype, "--out", str(out),
           *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def _compare(a: dict, b: dict) -> dict:
    out = {}
    for task, ta in a["tasks"].items():
        tb = b["tasks"].get(task, {})
        if ta.get("skipped") or tb.get("skipped"):
            out[task] = {"skipped": [ta.get("skipped"), tb.get("skipped")]}
            continue
        steered = {}
        for method, by_inj in ta["steered"].items():
            for inj, sa in by_inj.items():
                sb = tb["steered"][method][inj]
                steered[f"{method}/{inj}"] = {
                    DTYPES[0]: sa["top1"], DTYPES[1]: sb["top1"],
                    "difference": sb["top1"] - sa["top1"], "n": sa["n"],
                    "layer": [sa.get("layer"), sb.get("layer")]}
        heads = {m: len({tuple(h) for h in ta["heads"][m]} & {tuple(h) for h in tb["heads"][m]})
                 for m in ta["heads"]}
        out[task] = {
            "steered": steered,
            "zero_shot_top1": [ta["zero_shot_top1"], tb["zero_shot_top1"]],
            "shared_selected_heads": heads, "k": len(next(iter(ta["heads"].values()))),
            "max_abs_steered_difference": max(abs(s["difference"]) for s in steered.values())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", default="capitalize")
    ap.add_argument("--samples", default="8")
    args, extra = ap.parse_known_args()
    run_args = ["--tasks", args.tasks, "--samples", args.samples, *extra]
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in DTYPES:
            folder = Path(tmp) / dtype
            seconds[dtype] = _run(dtype, folder, run_args)
            results[dtype] = json.loads((folder / "results.json").read_text())
    report = {
        "benchmark": "dtype_run", "command": ["fvlens", "run", *run_args],
        "wall_seconds": seconds, "tasks": _compare(results[DTYPES[0]], results[DTYPES[1]]),
        "machine": machine(), "versions": versions()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["tasks"], indent=1))


if __name__ == "__main__":
    main()
