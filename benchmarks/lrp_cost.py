"""AttnLRP's cost against a plain forward on the embedded model: time and peak memory; JSON.

    python benchmarks/lrp_cost.py --out benchmarks/results/lrp_cost.json [--samples 4]

Same prompts as benchmarks/heads.py (clean ICL prompts of benchmarks/aie.py's corrupted
queries, ``--samples`` rows in one batch). Three calls are measured:

- ``forward``: ``last_logits(model, clean, batch_size=n)``, the unit of cost;
- ``attnlrp``: ``explain_batch`` alone (one forward and one backward under the rules);
- ``attnlrp_with_filter``: the top-5 filter forward (``evaluate``) and then ``explain_batch``,
  what head scoring costs while it does not read ``BatchRelevance.ranks``.

Time: the minimum over ``--repeats`` after a warm-up, the calls interleaved, in this process;
``cost_in_forwards`` is from process CPU time (with ``--threads 1`` it does not depend on how
busy the machine is), ``cost_in_forwards_wall`` from wall-clock time. Peak memory: each call
in its own fresh interpreter (benchmarks/memory.py: the resident-set high-water mark with
glibc's mmap threshold at 64 KiB), as the total peak and as the increment over what was
resident before the call (weights, prompts).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from aie import write_result
from memory import measure_peak, run_isolated

CALLS = ("forward", "attnlrp", "attnlrp_with_filter")


def prepare(samples: int, shots: int, task_name: str):
    from fvlens.models import load_model
    from fvlens.prompts import icl_prompts
    from fvlens.tasks import load_task

    model = load_model()
    train, _ = load_task(task_name).split(seed=0)
    queries = list(train.pairs)[30:30 + samples]  # benchmarks/aie.py's corrupted queries
    clean = icl_prompts(model, queries, train, shots=shots, seed=1)
    return model, clean


def call(model, clean, name: str):
    """The zero-argument function measured as ``name``."""
    from fvlens.attnlrp import explain_batch
    from fvlens.evaluation import evaluate, last_logits

    def lrp():
        return explain_batch(model, clean.tokens, clean.targets,
                             attention_mask=clean.attention_mask)

    if name == "forward":
        return lambda: last_logits(model, clean, batch_size=len(clean))
    if name == "attnlrp":
        return lrp
    if name == "attnlrp_with_filter":
        return lambda: (evaluate(model, clean), lrp())
    raise ValueError(f"unknown call {name!r}; choose from {CALLS}")


def worker(args) -> None:
    import json

    model, clean = prepare(args.samples, args.shots, args.task)
    fn = call(model, clean, args.worker)
    fn()  # warm-up: one-off allocator and kernel set-up
    print(json.dumps(measure_peak(fn)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/lrp_cost.json")
    ap.add_argument("--task", default="capitalize")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable timings on a shared machine)")
    ap.add_argument("--worker", choices=CALLS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)
    from fvlens.provenance import machine, versions

    model, clean = prepare(args.samples, args.shots, args.task)
    fns = {name: call(model, clean, name) for name in CALLS}
    for fn in fns.values():
        fn()  # warm-up
    wall = {name: [] for name in CALLS}
    cpu = {name: [] for name in CALLS}
    for _ in range(args.repeats):  # interleaved, so that every call sees the same load
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - t0)
    seconds = {name: min(v) for name, v in wall.items()}
    cpu_seconds = {name: min(v) for name, v in cpu.items()}
    del model, fns
    memory = {}
    common = ["--samples", str(args.samples), "--shots", str(args.shots), "--task", args.task,
              "--threads", str(args.threads)]
    for name in CALLS:
        memory[name] = run_isolated(Path(__file__), "--worker", name, *common)
    mib = 2 ** 20
    fwd = memory["forward"]
    result = {
        "benchmark": "lrp_cost", "model": "smollm2-135m", "task": args.task,
        "samples": len(clean), "prompt_tokens": int(clean.tokens.shape[1]),
        "repeats": args.repeats, "torch_threads": args.threads,
        "seconds": seconds, "cpu_seconds": cpu_seconds,
        "cost_in_forwards": {k: cpu_seconds[k] / cpu_seconds["forward"] for k in CALLS[1:]},
        "cost_in_forwards_wall": {k: seconds[k] / seconds["forward"] for k in CALLS[1:]},
        "peak_mib": {k: v["peak_bytes"] / mib for k, v in memory.items()},
        "peak_increment_mib": {k: v["peak_increment_bytes"] / mib for k, v in memory.items()},
        "baseline_mib": {k: v["baseline_bytes"] / mib for k, v in memory.items()},
        "peak_over_forward": {k: memory[k]["peak_bytes"] / fwd["peak_bytes"]
                              for k in CALLS[1:]},
        "increment_over_forward": {
            k: memory[k]["peak_increment_bytes"] / max(1, fwd["peak_increment_bytes"])
            for k in CALLS[1:]},
        "memory_method": "VmHWM - VmRSS in a fresh process, MALLOC_MMAP_THRESHOLD_=65536 "
                         "(benchmarks/memory.py)",
        "machine": machine(), "versions": versions(),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    sys.exit(main())
