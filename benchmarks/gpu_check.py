"""The GPU check (issue 14 §3): fvlens on CUDA in fp32 and bf16 against its fp32 CPU results.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json

Sections (each timed; a failing one is recorded with its error and the others still run):

- ``environment``: torch, CUDA, GPU, versions;
- ``load``: ``load_model(device="cuda", dtype=...)`` for float32 and bfloat16: load time, ICL
  top-1 on a few prompts and the largest last-position logit difference from the CPU fp32 model;
- ``aie``: fast vs reference causal mediation on CUDA (fp32 and bf16), max |Δ CIE|;
- ``attnlrp``: ``explain_batch`` on CUDA vs CPU fp32 (relative error of the head relevance and
  the last-query attention relevance) and the overlap of the top-20 heads of AttnLRP head
  scoring (``score_heads(method="attnlrp")``);
- ``throughput``: samples/min of a forward (``last_logits``), AttnLRP and fast AIE per dtype;
- ``cli``: ``fvlens run --tasks capitalize --samples 8`` and a small ``fvlens analogies`` on CUDA.

Exits 2 with one line on stderr when no CUDA device is visible, 1 when a section failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

DTYPES = ("float32", "bfloat16")
TOP = 20


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device visible (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda}); run it on a GPU machine", file=sys.stderr)
        raise SystemExit(2)


def environment() -> dict:
    import torch

    from fvlens.provenance import machine, versions

    if not torch.cuda.is_available():  # a --device cpu dry run
        return {"torch": torch.__version__, "cuda": None, "machine": machine(),
                "versions": versions()}
    props = torch.cuda.get_device_properties(0)
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "gpu": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": props.total_memory / 2 ** 30, "device_count": torch.cuda.device_count(),
            "bf16_supported": torch.cuda.is_bf16_supported(), "machine": machine(),
            "versions": versions()}


def prompts(model, task_name: str, n: int, shots: int, *, seed: int = 0):
    """``n`` clean and shuffled-label ICL prompts of a task (the benchmarks' recipe)."""
    from fvlens.prompts import icl_prompts
    from fvlens.tasks import load_task

    train, _ = load_task(task_name).split(seed=seed)
    pairs = list(train.pairs)
    clean = icl_prompts(model, pairs[30:30 + n], train, shots=shots, seed=seed + 1)
    corrupted = icl_prompts(model, pairs[30:30 + n], train, shots=shots, seed=seed + 1,
                            shuffle_labels=True)
    means = icl_prompts(model, pairs[:16], train, shots=shots, seed=seed)
    return clean, corrupted, means


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def per_min(n: int, fn, device: str, repeats: int = 3) -> float:
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 60 * n / best


def rel_err(a, b) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def top_heads(scores, k: int = TOP) -> set:
    return {tuple(h) for h in scores.top_k(k)}


def run_sections(args) -> dict:
    import torch

    from fvlens.activations import mean_head_activations
    from fvlens.evaluation import evaluate, last_logits
    from fvlens.heads.aie import indirect_effects
    from fvlens.heads.select import score_heads
    from fvlens.attnlrp import explain_batch
    from fvlens.models import load_model

    out: dict = {"sections": {}, "errors": {}}
    device = args.device
    cuda = device.startswith("cuda")

    def section(name):
        def wrap(fn):
            t0 = time.perf_counter()
            try:
                out["sections"][name] = fn()
            except Exception as err:  # noqa: BLE001 - record and go on
                out["errors"][name] = f"{type(err).__name__}: {err}"
                out["sections"][name] = {"traceback": traceback.format_exc()[-4000:]}
            out["sections"].setdefault(name, {})
            if isinstance(out["sections"][name], dict):
                out["sections"][name]["seconds"] = time.perf_counter() - t0
            print(f"[gpu_check] {name}: {time.perf_counter() - t0:.1f} s"
                  f"{' FAILED ' + out['errors'][name] if name in out['errors'] else ''}",
                  flush=True)
            return fn
        return wrap

    section("environment")(environment)
    ref: dict = {}

    @section("cpu_reference")
    def _cpu():
        model = load_model(args.model, device="cpu", dtype=torch.float32)
        clean, corrupted, means = prompts(model, args.task, args.samples, args.shots)
        ref.update(clean=clean, corrupted=corrupted, means=means,
                   logits=last_logits(model, clean),
                   lrp=explain_batch(model, clean.tokens, clean.targets,
                                     attention_mask=clean.attention_mask),
                   heads=score_heads(model, clean, method="attnlrp", progress=False))
        return {"icl_top1": evaluate(model, clean).top1, "n": len(clean),
                "prompt_tokens": int(clean.tokens.shape[1])}

    models: dict = {}
    for dtype_name in DTYPES:
        dtype = getattr(torch, dtype_name)

        @section(f"load_{dtype_name}")
        def _load(dtype=dtype, dtype_name=dtype_name):
            t0 = time.perf_counter()
            model = load_model(args.model, device=device, dtype=dtype)
            seconds = time.perf_counter() - t0
            models[dtype_name] = model
            param = next(model.parameters())
            logits = last_logits(model, ref["clean"])
            return {"load_seconds": seconds, "param_dtype": str(param.dtype),
                    "device": str(param.device),
                    "icl_top1": evaluate(model, ref["clean"]).top1,
                    "max_abs_logit_diff_vs_cpu_fp32": float(
                        (logits.float() - ref["logits"]).abs().max()),
                    "argmax_agreement_vs_cpu_fp32": float(
                        (logits.argmax(-1) == ref["logits"].argmax(-1)).float().mean())}

    for dtype_name, model in models.items():
        @section(f"aie_{dtype_name}")
        def _aie(model=model):
            mean_z = mean_head_activations(model, ref["means"])
            few = ref["corrupted"].select(list(range(min(args.aie_prompts,
                                                         len(ref["corrupted"])))))
            fast = indirect_effects(model, few, mean_z, method="fast", progress=False)
            slow = indirect_effects(model, few, mean_z, method="reference", progress=False)
            return {"prompts": len(few), "max_abs_diff_fast_vs_reference": float(
                (fast - slow).abs().max()), "max_abs_cie": float(slow.abs().max())}

        @section(f"attnlrp_{dtype_name}")
        def _lrp(model=model):
            clean = ref["clean"]
            rel = explain_batch(model, clean.tokens, clean.targets,
                                attention_mask=clean.attention_mask)
            heads = score_heads(model, clean, method="attnlrp", progress=False)
            shared = top_heads(heads) & top_heads(ref["heads"])
            return {"heads_rel_err_vs_cpu_fp32": rel_err(rel.heads, ref["lrp"].heads),
                    "attention_rel_err_vs_cpu_fp32": rel_err(rel.attention,
                                                             ref["lrp"].attention),
                    "tokens_rel_err_vs_cpu_fp32": rel_err(rel.tokens, ref["lrp"].tokens),
                    f"top{TOP}_overlap_vs_cpu_fp32": len(shared) / TOP,
                    "ranks_equal_cpu": bool((rel.ranks == ref["lrp"].ranks).all())}

        @section(f"throughput_{dtype_name}")
        def _speed(model=model):
            clean, corrupted = ref["clean"], ref["corrupted"]
            n = len(clean)
            mean_z = mean_head_activations(model, ref["means"])
            base = torch.cuda.memory_allocated() if cuda else 0
            peaks = {}

            def peak(fn):
                if not cuda:
                    return None
                torch.cuda.reset_peak_memory_stats()
                fn()
                torch.cuda.synchronize()
                return (torch.cuda.max_memory_allocated() - base) / 2 ** 20

            fwd = lambda: last_logits(model, clean, batch_size=n)  # noqa: E731
            lrp = lambda: explain_batch(model, clean.tokens, clean.targets,  # noqa: E731
                                        attention_mask=clean.attention_mask)
            aie = lambda: indirect_effects(model, corrupted, mean_z,  # noqa: E731
                                           method="fast", progress=False)
            rates = {"forward": per_min(n, fwd, device), "attnlrp": per_min(n, lrp, device),
                     "aie_fast": per_min(len(corrupted), aie, device, repeats=2)}
            for name, fn in (("forward", fwd), ("attnlrp", lrp), ("aie_fast", aie)):
                peaks[name] = peak(fn)
            mib = base / 2 ** 20
            return {"samples_per_min": rates, "peak_mib_over_weights": peaks,
                    "attnlrp_cost_in_forwards": rates["forward"] / rates["attnlrp"],
                    "attnlrp_peak_over_forward_peak": (peaks["attnlrp"] + mib) / (
                        peaks["forward"] + mib) if cuda else None,
                    "weights_mib": mib}

    models.clear()
    if cuda:
        torch.cuda.empty_cache()
    cli_out = Path(args.work)

    if args.skip_cli:
        return out

    @section("cli_run")
    def _run():
        cmd = [sys.executable, "-m", "fvlens.cli", "run", "--tasks", "capitalize",
               "--samples", "8", "--out", str(cli_out / "run")]
        return _subprocess(cmd, cli_out / "run" / "results.json")

    @section("cli_analogies")
    def _analogies():
        cmd = [sys.executable, "-m", "fvlens.cli", "analogies", "--bank", str(cli_out / "bank"),
               "--build-bank", "capitalize,antonym", "--steps", "10", "--pairs", "10",
               "--max-items", "16", "--fit-steps", "5", "--fit-init", "best",
               "--out", str(cli_out / "analogies")]
        return _subprocess(cmd, cli_out / "analogies" / "results.json")

    return out


def _subprocess(cmd: list[str], results: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    info = {"command": " ".join(cmd[2:]), "returncode": proc.returncode,
            "wall_seconds": time.perf_counter() - t0, "stdout_tail": proc.stdout[-3000:]}
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    if results.is_file():
        data = json.loads(results.read_text())
        info["result_keys"] = sorted(data)[:20]
        info["tasks"] = {t: {k: v for k, v in r.items() if isinstance(v, (int, float))}
                         for t, r in data.get("tasks", {}).items()} if isinstance(
            data.get("tasks"), dict) else None
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/gpu_check.json")
    ap.add_argument("--model", default="smollm2-135m", help="load_model spec")
    ap.add_argument("--task", default="capitalize")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--device", default="cuda",
                    help="cuda (the check); cpu only to try this script's code paths")
    ap.add_argument("--aie-prompts", type=int, default=2,
                    help="prompts of the fast-vs-reference AIE comparison")
    ap.add_argument("--skip-cli", action="store_true", help="skip the fvlens run/analogies runs")
    ap.add_argument("--work", default=os.environ.get("GPU_CHECK_WORK", "runs/gpu_check"),
                    help="folder for the CLI runs' outputs")
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        require_cuda()
    t0 = time.perf_counter()
    result = {"benchmark": "gpu_check", "model": args.model, "task": args.task,
              "samples": args.samples, "shots": args.shots, **run_sections(args)}
    result["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out} in {result['seconds']:.0f} s; failed sections: "
          f"{sorted(result['errors']) or 'none'}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
