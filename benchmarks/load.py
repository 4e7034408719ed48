"""Cold and warm load time of the embedded model, each in a fresh process; writes JSON.

    python benchmarks/load.py --out benchmarks/results/load.json

Cold: an empty weight cache (GGUF dequantisation + conversion + cache write). Warm: a second
process reading the cache. Both include only `load_model()`, not Python's imports, which are
reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from fvlens.provenance import machine, versions

PROBE = """
import time, json
t0 = time.perf_counter()
from fvlens.models import load_model
t1 = time.perf_counter()
m = load_model("smollm2-135m")
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "from_cache": m.fvlens_meta["from_cache"]}))
"""


def probe(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/load.json")
    ap.add_argument("--warm-runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fvlens-bench-cache-") as cache:
        env = os.environ | {"FVLENS_CACHE": cache, "HF_HUB_OFFLINE": "1"}
        cold = probe(env)
        warm = [probe(env) for _ in range(args.warm_runs)]
    assert not cold["from_cache"] and all(w["from_cache"] for w in warm)
    result = {
        "benchmark": "load", "model": "smollm2-135m",
        "cold_load_seconds": cold["load_s"],
        "warm_load_seconds": min(w["load_s"] for w in warm),
        "warm_load_seconds_all": [w["load_s"] for w in warm],
        "import_seconds": min(w["import_s"] for w in warm),
        "machine": machine(), "versions": versions(),
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k.endswith("seconds")}, indent=1))


if __name__ == "__main__":
    main()
