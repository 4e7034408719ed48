"""Head-selection cost side by side on the embedded model; writes JSON.

    python benchmarks/heads.py --out benchmarks/results/heads.json [--samples 4]

On the same queries: a plain forward pass (the unit of cost), AttnLRP (one forward and one
backward under the rules, ``explain_batch``), and causal mediation by the reference (one
forward per head) and the fast path. Samples per minute for each, and the ratios.
"""

from __future__ import annotations

import argparse
import time


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
    args = ap.parse_args()
    model = load_model()
    _, mean_z, corrupted = setup(model, args.task, args.samples, args.shots)
    task = load_task(args.task)
    train, _ = task.split(seed=0)
    clean = icl_prompts(model, corrupted.queries, train, shots=args.shots, seed=1)
    n = len(clean)
    last_logits(model, clean)  # warm-up
    fwd = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        last_logits(model, clean, batch_size=n)
        fwd.append(time.perf_counter() - t0)
    lrp = []
    explain_batch(model, clean.tokens, clean.targets, attention_mask=clean.attention_mask)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        explain_batch(model, clean.tokens, clean.targets, attention_mask=clean.attention_mask)
        lrp.append(time.perf_counter() - t0)
    aie = measure_aie(model, corrupted, mean_z)
    result = {
        "benchmark": "heads", "model": "smollm2-135m", "task": args.task, "samples": n,
        "prompt_tokens": int(clean.tokens.shape[1]),
        "forward_samples_per_min": per_min(n, min(fwd)),
        "attnlrp_samples_per_min": per_min(n, min(lrp)),
        "aie_reference_samples_per_min": aie["reference_samples_per_min"],
        "aie_fast_samples_per_min": aie["fast_samples_per_min"],
        "attnlrp_cost_in_forwards": min(lrp) / min(fwd),
        "attnlrp_over_aie_reference": aie["reference_seconds"] / min(lrp),
        "attnlrp_over_aie_fast": aie["fast_seconds"] / min(lrp),
        "aie_fast_over_reference": aie["speedup"],
        "aie_max_abs_diff": aie["max_abs_diff"],
        "machine": machine(), "versions": versions(),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
