"""Causal mediation, reference vs fast, on the embedded model: same prompts, one run; JSON.

    python benchmarks/aie.py --out benchmarks/results/aie.json [--samples 4 --task capitalize]

The reference patches one head per full forward pass (n_layers * n_heads passes per prompt);
the fast path runs each prompt once and then only the last token from each patched layer up.
Both get the same corrupted prompts and the same mean activations.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from fvlens.activations import mean_head_activations
from fvlens.heads.aie import indirect_effects_fast, indirect_effects_reference
from fvlens.models import load_model
from fvlens.prompts import icl_prompts
from fvlens.provenance import machine, versions
from fvlens.tasks import load_task


def setup(model, task_name: str, samples: int, shots: int, seed: int = 0):
    """Mean activations from clean ICL prompts and ``samples`` corrupted prompts."""
    task = load_task(task_name)
    train, _ = task.split(seed=seed)
    pairs = list(train.pairs)
    clean = icl_prompts(model, pairs[:30], train, shots=shots, seed=seed)
    mean_z = mean_head_activations(model, clean)
    corrupted = icl_prompts(model, pairs[30:30 + samples], train, shots=shots, seed=seed + 1,
                            shuffle_labels=True)
    return clean, mean_z, corrupted


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def write_result(path: str, result: dict) -> None:
    """Write a benchmark's JSON to ``path`` and print it without machine and versions."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "versions")},
                     indent=1))


def measure_aie(model, corrupted, mean_z) -> dict:
    n = len(corrupted)
    # Warm-up: the first call pays one-off allocator and kernel set-up costs, which would be
    # counted against the fast path only (the reference runs n_layers * n_heads passes).
    indirect_effects_fast(model, corrupted.select([0]), mean_z, progress=False)
    fast, t_fast = timed(lambda: indirect_effects_fast(model, corrupted, mean_z, progress=False))
    ref, t_ref = timed(lambda: indirect_effects_reference(model, corrupted, mean_z,
                                                          progress=False))
    return {
        "samples": n,
        "reference_seconds": t_ref, "fast_seconds": t_fast,
        "reference_samples_per_min": 60 * n / t_ref, "fast_samples_per_min": 60 * n / t_fast,
        "speedup": t_ref / t_fast,
        "max_abs_diff": float((fast - ref).abs().max()),
        "max_abs_cie": float(ref.abs().max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/aie.json")
    ap.add_argument("--task", default="capitalize")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--shots", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model()
    _, mean_z, corrupted = setup(model, args.task, args.samples, args.shots)
    result = {"benchmark": "aie", "model": "smollm2-135m", "task": args.task,
              "shots": args.shots, "prompt_tokens": int(corrupted.tokens.shape[1]),
              **measure_aie(model, corrupted, mean_z),
              "machine": machine(), "versions": versions()}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
