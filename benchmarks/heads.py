"""Head-selection cost side by side on the embedded model; writes JSON.

    python benchmarks/heads.py --out benchmarks/results/heads.json [--samples 4]

On the same queries: a plain forward pass (the unit of cost), AttnLRP (one forward and one
backward under the rules, ``explain_batch``), and causal mediation by the reference (one
forward per head) and the fast path. Samples per minute for each, and the ratios.

Forward and AttnLRP are timed interleaved, one torch thread, by the process's CPU time (what a
busy shared machine distorts least; wall time is kept beside it): AttnLRP's cost in forwards is
the ratio of the minima over ``--repeats``.
"""

from __future__ import annotations

import argparse
import time

import torch

from aie import measure_aie, setup, write_result
from fvlens.attnlrp import explain_batch
from fvlens.evaluation import last_logits
from fvlens.models import load_model
from fvlens.prompts import icl_prompts
from fvlens.provenance import machine, versions
from fvlens.tasks import load_task


def per_min(n: int, seconds: float) -> float:
    return 60 * n / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/heads.json")
    ap.add_argument("--task", default="capitalize")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="forward/AttnLRP timing repeats")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    _, mean_z, corrupted = setup(model, args.task, args.samples, args.shots)
    task = load_task(args.task)
    train, _ = task.split(seed=0)
    clean = icl_prompts(model, corrupted.queries, train, shots=args.shots, seed=1)
    n = len(clean)
    calls = {
        "forward": lambda: last_logits(model, clean, batch_size=n),
        "attnlrp": lambda: explain_batch(model, clean.tokens, clean.targets,
                                         attention_mask=clean.attention_mask),
    }
    wall = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    for fn in calls.values():  # warm-up
        fn()
    for _ in range(args.repeats):  # interleaved: every call sees the same load
        for name, fn in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    fwd, lrp = cpu["forward"], cpu["attnlrp"]
    aie = measure_aie(model, corrupted, mean_z)
    result = {
        "benchmark": "heads", "model": "smollm2-135m", "task": args.task, "samples": n,
        "prompt_tokens": int(clean.tokens.shape[1]),
        "forward_samples_per_min": per_min(n, min(fwd)),
        "attnlrp_samples_per_min": per_min(n, min(lrp)),
        "aie_reference_samples_per_min": aie["reference_samples_per_min"],
        "aie_fast_samples_per_min": aie["fast_samples_per_min"],
        "attnlrp_cost_in_forwards": min(lrp) / min(fwd),
        "attnlrp_cost_in_forwards_wall": min(wall["attnlrp"]) / min(wall["forward"]),
        "timing": "forward/AttnLRP: min CPU seconds over repeats, interleaved; AIE: wall",
        "torch_threads": args.threads,
        "attnlrp_over_aie_reference": aie["reference_seconds"] / min(wall["attnlrp"]),
        "attnlrp_over_aie_fast": aie["fast_seconds"] / min(wall["attnlrp"]),
        "aie_fast_over_reference": aie["speedup"],
        "aie_max_abs_diff": aie["max_abs_diff"],
        "machine": machine(), "versions": versions(),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
