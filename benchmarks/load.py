"""Cold and warm load of the embedded models, each in a fresh process; writes JSON.

    python benchmarks/load.py --out benchmarks/results/load.json
    python benchmarks/load.py --models smollm2-135m --warm-runs 5

Cold: an empty weight cache (assembling a multi-part file, GGUF dequantisation, conversion,
cache write). Warm: new processes reading the cache. Times cover ``load_model()`` only; Python's
imports are reported separately, and one warm run is split into phases (checks, reading the
weights, tokenizer, building). Peak RSS is the probe process's ``ru_maxrss``. Models whose
packages are not installed are skipped (their pip command is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fvlens.provenance import machine, versions

PROBE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from fvlens.models import load_model
t1 = time.perf_counter()
phases = {}
if "--phases" in sys.argv:
    import fvlens.models.cache as cache, fvlens.models.loader as loader
    import safetensors.torch as st
    from transformer_lens import HookedTransformer

    def timed(owner, name, label):
        real = getattr(owner, name)
        def wrapper(*a, **k):
            s = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - s
        setattr(owner, name, wrapper)

    timed(cache, "_check_meta", "check meta.json + header")
    timed(cache, "_check_files", "check file identities")
    timed(st, "load_file", "read weights")
    timed(cache, "load_tokenizer", "load tokenizer")
    timed(loader, "build", "build model (meta device + assign)")
    timed(HookedTransformer, "set_tokenizer", "set_tokenizer")
m = load_model(sys.argv[1])
t2 = time.perf_counter()
n = sum(p.numel() for p in m.parameters())
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "from_cache": m.fvlens_meta["from_cache"],
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                  "n_params": n, "entry": m.fvlens_meta["cache_entry"], "phases": phases}))
"""


def probe(name: str, env: dict[str, str], phases: bool = False) -> dict:
    cmd = [sys.executable, "-c", PROBE, name] + (["--phases"] if phases else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"probe of {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench(name: str, warm_runs: int, keep_cache: Path | None) -> dict:
    from fvlens.models import EMBEDDED_MODELS
    from fvlens.models.embedded import missing_parts

    model = EMBEDDED_MODELS[name]
    if missing_parts(model):
        return {"model": name, "skipped": f"not installed: {model.install_command}"}
    cache = Path(tempfile.mkdtemp(prefix="fvlens-bench-cache-"))
    try:
        env = os.environ | {"FVLENS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        cold = probe(name, env)
        warm = [probe(name, env) for _ in range(warm_runs)]
        split = probe(name, env, phases=True)
        assert not cold["from_cache"] and all(w["from_cache"] for w in warm)
        entry = Path(cold["entry"])
        gguf = cache / "gguf" / model.filename
        fp32_gb = cold["n_params"] * 4 / 1e9
        result = {
            "model": name,
            "n_params": cold["n_params"],
            "fp32_weights_gb": fp32_gb,
            "cold_load_seconds": cold["load_s"],
            "cold_peak_rss_gb": cold["peak_rss_gb"],
            "cold_peak_over_fp32_weights": cold["peak_rss_gb"] / fp32_gb,
            "warm_load_seconds": min(w["load_s"] for w in warm),
            "warm_load_seconds_all": [w["load_s"] for w in warm],
            "warm_peak_rss_gb": min(w["peak_rss_gb"] for w in warm),
            "warm_phases_seconds": split["phases"],
            "warm_phases_total_load_seconds": split["load_s"],
            "import_seconds": min(w["import_s"] for w in warm),
            "cache_entry_bytes": du(entry),
            "assembled_gguf_bytes": gguf.stat().st_size if gguf.exists() else None,
        }
        if keep_cache is not None:
            keep_cache.mkdir(parents=True, exist_ok=True)
            for item in [*cache.glob("gguf/*"), *cache.iterdir()]:
                target = keep_cache / item.relative_to(cache)
                if item.exists() and not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(item), target)
        return result
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/load.json")
    ap.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b,gemma-3-270m")
    ap.add_argument("--warm-runs", type=int, default=3)
    ap.add_argument("--keep-cache", type=Path, default=None,
                    help="move the built entries here afterwards (e.g. your $FVLENS_CACHE)")
    args = ap.parse_args()
    runs = []
    for name in args.models.split(","):
        runs.append(bench(name, args.warm_runs, args.keep_cache))
        print(json.dumps(runs[-1], indent=1), flush=True)
    result = {"benchmark": "load", "runs": runs, "machine": machine(), "versions": versions(),
              "load_average": os.getloadavg()}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
