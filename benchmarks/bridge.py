"""TransformerBridge against HookedTransformer on the embedded model; writes JSON.

    python benchmarks/bridge.py numbers --out benchmarks/results/bridge.json
    python benchmarks/bridge.py runs A/results.json B/results.json ... --out ...
    python benchmarks/bridge.py explain-across --python /path/to/tl4-venv/bin/python

``numbers`` (needs transformer-lens 3.x, which has both classes): load times of each backend
in fresh processes (warm; ``--cold`` adds a first load into an empty cache), then on one model
pair the logits of a batch of ICL prompts, ``explain`` (relative error of each field), fast
AIE on corrupted prompts (agreement and time). ``runs`` compares the steered top-1 of
``fvlens run`` results made with each backend (the issue's acceptance check) and merges the
comparison into ``--out``. ``explain-across`` compares ``explain`` on HookedTransformer (this
interpreter) with ``explain`` on the bridge under another interpreter (TransformerLens 4).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's fvlens, also in the probes' processes

from fvlens.provenance import machine, versions  # noqa: E402

PROBE = """
import json, time
t0 = time.perf_counter()
from fvlens.models import load_model
m = load_model("smollm2-135m", backend={backend!r}, device="cpu")
print(json.dumps({{"load_s": time.perf_counter() - t0, "from_cache": m.fvlens_meta["from_cache"],
                  "phases": m.fvlens_meta.get("seconds")}}))
"""
EXPLAIN_PROBE = """
import json, time, torch
from importlib.metadata import version
torch.set_num_threads({threads})
from fvlens.attnlrp.relevance import explain
from fvlens.models import load_model
m = load_model("smollm2-135m", backend={backend!r}, device="cpu")
for p in m.parameters():
    p.requires_grad_(False)
t0 = time.perf_counter()
r = explain(m, {prompt!r}, " large")
s = time.perf_counter() - t0
torch.save({{f: getattr(r, f) for f in ("tokens", "heads", "attention")}}, {path!r})
print(json.dumps({{"seconds": s, "logit": float(r.logit), "backend": {backend!r},
                  "transformer-lens": version("transformer-lens")}}))
"""
PROMPT = "Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: fast\nA:"


def load_probe(backend: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(backend=backend)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def numbers(args: argparse.Namespace) -> dict:
    import torch

    from fvlens.forward import forward_last
    from fvlens.heads.aie import indirect_effects
    from fvlens.attnlrp.relevance import explain
    from fvlens.models import load_model
    from fvlens.prompts import corrupted, icl_prompts
    from fvlens.tasks import load_task

    torch.set_num_threads(args.threads)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
                        "PYTHONPATH": str(ROOT)}
    out: dict = {"load": {}}
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="fvlens-bench-cache-") as cache:
            for backend in ("bridge", "hooked"):
                out["load"][f"{backend}_cold"] = load_probe(backend, env | {"FVLENS_CACHE": cache})
    for backend in ("bridge", "hooked"):
        runs = [load_probe(backend, env) for _ in range(args.warm_runs)]
        out["load"][f"{backend}_warm"] = min(runs, key=lambda r: r["load_s"])
    models = {b: load_model("smollm2-135m", backend=b, device="cpu") for b in ("hooked", "bridge")}
    for m in models.values():
        for p in m.parameters():
            p.requires_grad_(False)
    train, test = load_task("capitalize").split(seed=0)
    batch = icl_prompts(models["hooked"], list(test.pairs)[:8], train, shots=10, seed=0)
    logits = {b: forward_last(m, batch.tokens, batch.attention_mask) for b, m in models.items()}
    out["forward"] = {
        "prompts": len(batch), "tokens": list(batch.tokens.shape),
        "max_abs_logit_diff": float((logits["bridge"] - logits["hooked"]).abs().max()),
        "top1_equal": bool(torch.equal(logits["bridge"].argmax(-1), logits["hooked"].argmax(-1))),
    }
    rel = {}
    for b, m in models.items():
        rel[b], out.setdefault("explain_seconds", {})[b] = timed(lambda m=m: explain(m, PROMPT,
                                                                                   " large"))
    out["explain"] = {f: relative(getattr(rel["bridge"], f), getattr(rel["hooked"], f))
                      for f in ("tokens", "heads", "attention")}
    out["explain"]["logit"] = abs(rel["bridge"].logit - rel["hooked"].logit) / abs(
        rel["hooked"].logit)
    bad = corrupted(models["hooked"], batch.select(range(args.aie_prompts)), seed=0)
    g = torch.Generator().manual_seed(0)
    mean_z = torch.randn(30, 9, 64, generator=g)
    aie = {}
    for b, m in models.items():
        aie[b], out.setdefault("fast_aie_seconds", {})[b] = timed(
            lambda m=m: indirect_effects(m, bad, mean_z, method="fast", progress=False))
    out["fast_aie"] = {"prompts": len(bad),
                       "max_abs_diff": float((aie["bridge"] - aie["hooked"]).abs().max()),
                       "max_abs_effect": float(aie["hooked"].abs().max())}
    return out


def explain_across(args: argparse.Namespace) -> dict:
    """``explain`` on HookedTransformer (this interpreter, TL 3.x) against the bridge under
    another interpreter (``--python``, e.g. a venv with transformer-lens 4.3), fp32."""
    import torch

    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
                        "PYTHONPATH": str(ROOT)}
    got = {}
    with tempfile.TemporaryDirectory(prefix="fvlens-bench-explain-") as tmp:
        for backend, python in (("hooked", sys.executable), ("bridge", args.python)):
            path = os.path.join(tmp, f"{backend}.pt")
            code = EXPLAIN_PROBE.format(threads=args.threads, backend=backend, prompt=PROMPT,
                                        path=path)
            t0 = time.perf_counter()
            done = subprocess.run([python, "-c", code], env=env, capture_output=True,
                                  text=True, check=True)
            info = json.loads(done.stdout.strip().splitlines()[-1])
            info["process_wall_s"] = time.perf_counter() - t0
            got[backend] = (info, torch.load(path))
    (hi, ht), (bi, bt) = got["hooked"], got["bridge"]
    rel = {f: relative(bt[f], ht[f]) for f in ("tokens", "heads", "attention")}
    rel["logit"] = abs(bi["logit"] - hi["logit"]) / abs(hi["logit"])
    return {"explain_across_versions": {
        "prompt": PROMPT, "target": " large", "dtype": "float32",
        "hooked": hi, "bridge": bi, "relative_diff": rel,
        "max_relative_diff": max(rel.values()), "bound": 1e-4}}


def runs(args: argparse.Namespace) -> dict:
    table = {}
    for path in args.results:
        with open(path) as f:
            r = json.load(f)
        key = f"{r['settings'].get('backend', 'hooked')} / transformer-lens " \
              f"{r['versions']['transformer-lens']}"
        table[key] = {"path": path, "seconds": r.get("seconds"), "tasks": {
            name: {f"{m}/{i}": s["top1"] for m, inj in t.get("steered", {}).items()
                   for i, s in inj.items()} | {"zero_shot": t.get("zero_shot_top1"),
                                               "n": t.get("n")}
            for name, t in r["tasks"].items()}}
    ref = next(v for k, v in table.items() if k.startswith("hooked"))
    for v in table.values():
        v["max_abs_diff_vs_hooked"] = max(
            abs(v["tasks"][t][k] - ref["tasks"][t][k]) for t in ref["tasks"]
            for k in ref["tasks"][t] if "/" in k)
    return {"fvlens_run": table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("numbers")
    s.add_argument("--cold", action="store_true")
    s.add_argument("--warm-runs", type=int, default=2)
    s.add_argument("--aie-prompts", type=int, default=4)
    s.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("runs")
    s.add_argument("results", nargs="+")
    s = sub.add_parser("explain-across")
    s.add_argument("--python", required=True, help="interpreter with transformer-lens 4.x")
    s.add_argument("--threads", type=int, default=1)
    for s in sub.choices.values():
        s.add_argument("--out", default="benchmarks/results/bridge.json")
    args = ap.parse_args()
    result = {"numbers": numbers, "runs": runs,
              "explain-across": explain_across}[args.command](args)
    previous = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            previous = json.load(f)
    merged = previous | result | {"benchmark": "bridge", "model": "smollm2-135m",
                                  "machine": machine(), "versions": versions()}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(merged, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
