"""How time and peak memory grow with model and prompt size: forward, AttnLRP, fast AIE; JSON.

    python benchmarks/scale.py --out benchmarks/results/scale.json
    python benchmarks/scale.py --plot benchmarks/results/scale.json --img docs/img

Tiny random Llama-style HookedTransformers (RMSNorm, rotary, gated SiLU MLP, d_mlp = 4
d_model) on the CPU. From a base model one dimension varies at a time: layers, heads (d_head
fixed), d_model (d_head = d_model / n_heads) and prompt length. For each point three calls on
one batch of random prompts: a forward to the last position's logits (``last_logits``),
AttnLRP (``explain_batch``) and fast causal mediation (``indirect_effects(method="fast")``).

Time: process CPU time, minimum over repeats, one torch thread, in this process. Peak memory: all points again in one fresh
interpreter (benchmarks/memory.py: resident-set high-water mark, glibc mmap threshold 64 KiB),
as the increment over what was resident before the call (the model's weights and the prompts).
Growth exponents: least-squares slope of log(value) on log(size) per dimension and call.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from memory import measure_peak, run_isolated

CALLS = ("forward", "attnlrp", "aie_fast")
BASE = {"n_layers": 4, "n_heads": 8, "d_model": 256, "pos": 128}
SWEEPS = {
    "n_layers": [2, 4, 8, 16],
    "n_heads": [2, 4, 8, 16],
    "d_model": [128, 256, 512, 1024],
    "pos": [32, 64, 128, 256, 512],
}
BATCH, D_VOCAB, D_HEAD = 4, 2048, 32


QUICK = {dim: values[:2] for dim, values in SWEEPS.items()}


def points(sweeps: dict[str, list[int]] = SWEEPS) -> list[tuple[str, dict[str, int]]]:
    """(varied dimension, settings) for every point, the base point once per dimension."""
    return [(dim, BASE | {dim: v}) for dim, values in sweeps.items() for v in values]


def build(p: dict[str, int]):
    """The model and a random batch for one point (seeded)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from fvlens.prompts import PromptBatch
    from fvlens.tasks import Pair

    d_head = p["d_model"] // p["n_heads"] if p.get("_dim") == "d_model" else D_HEAD
    cfg = HookedTransformerConfig(
        n_layers=p["n_layers"], d_model=p["d_model"], d_head=d_head, n_heads=p["n_heads"],
        d_mlp=4 * p["d_model"], d_vocab=D_VOCAB, n_ctx=max(SWEEPS["pos"]), act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=d_head,
        gated_mlp=True, final_rms=True, seed=0)
    torch.manual_seed(0)
    model = HookedTransformer(cfg)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, D_VOCAB, (BATCH, p["pos"]), generator=g)
    batch = PromptBatch(tokens=tokens, attention_mask=torch.ones_like(tokens),
                        targets=torch.randint(1, D_VOCAB, (BATCH,), generator=g),
                        texts=("",) * BATCH, queries=(Pair(input="a", output="b"),) * BATCH,
                        frame_positions=((),) * BATCH, context_positions=((),) * BATCH,
                        kind="icl_shuffled")
    mean_z = 0.1 * torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head, generator=g)
    return model, batch, mean_z


def call(model, batch, mean_z, name: str):
    from fvlens.evaluation import last_logits
    from fvlens.heads.aie import indirect_effects
    from fvlens.attnlrp import explain_batch

    if name == "forward":
        return lambda: last_logits(model, batch, batch_size=len(batch))
    if name == "attnlrp":
        return lambda: explain_batch(model, batch.tokens, batch.targets,
                                     attention_mask=batch.attention_mask)
    if name == "aie_fast":
        return lambda: indirect_effects(model, batch, mean_z, method="fast",
                                        batch_size=len(batch), progress=False)
    raise ValueError(name)


def _settings(dim: str, p: dict[str, int]) -> dict[str, int]:
    return p | {"_dim": dim}


def seconds(fn, *, min_total: float = 0.3, max_repeats: int = 5) -> float:
    """Minimum process CPU time of ``fn()`` over ≥ 2 runs after a warm-up (with one torch
    thread, CPU time does not depend on how busy a shared machine is)."""
    fn()  # warm-up
    runs, t_all = [], time.perf_counter()
    while len(runs) < 2 or (time.perf_counter() - t_all < min_total and len(runs) < max_repeats):
        c0 = time.process_time()
        fn()
        runs.append(time.process_time() - c0)
    return min(runs)


def memory_worker(sweeps: dict[str, list[int]]) -> None:
    out = []
    for dim, p in points(sweeps):
        model, batch, mean_z = build(_settings(dim, p))
        row = {}
        for name in CALLS:
            fn = call(model, batch, mean_z, name)
            fn()  # warm-up
            row[name] = measure_peak(fn)
        row["weights_bytes"] = sum(t.numel() * t.element_size() for t in model.parameters())
        out.append(row)
        del model, batch, mean_z
    print(json.dumps(out))


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x); None with < 2 positive points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx


def exponents(raw: list[dict], sweeps: dict[str, list[int]]) -> dict:
    out: dict = {}
    for dim in sweeps:
        rows = [r for r in raw if r["dim"] == dim]
        xs = [r["settings"][dim] for r in rows]
        out[dim] = {name: {
            "seconds": slope(xs, [r["seconds"][name] for r in rows]),
            "peak_increment": slope(xs, [r["peak_increment_bytes"][name] for r in rows]),
        } for name in CALLS}
    return out


def figure(result: dict):
    """Time and peak memory against each dimension, log-log, one line per call."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    dims = list(result["settings"]["sweeps"])
    fig = make_subplots(rows=2, cols=len(dims), shared_yaxes="rows",
                        subplot_titles=dims, vertical_spacing=0.12, horizontal_spacing=0.04)
    colors = dict(zip(CALLS, ("#636efa", "#ef553b", "#00cc96")))
    for col, dim in enumerate(dims, start=1):
        rows = [r for r in result["points"] if r["dim"] == dim]
        xs = [r["settings"][dim] for r in rows]
        for name in CALLS:
            exp = result["exponents"][dim][name]
            for row, (key, scale) in enumerate((("seconds", 1e3),
                                                ("peak_increment_bytes", 2 ** -20)), start=1):
                e = exp["seconds" if key == "seconds" else "peak_increment"]
                fig.add_trace(go.Scatter(
                    x=xs, y=[r[key][name] * scale for r in rows], mode="lines+markers",
                    name=f"{name}", legendgroup=name, showlegend=(row == 1 and col == 1),
                    line=dict(color=colors[name]),
                    hovertemplate=f"{name} {dim}=%{{x}}: %{{y:.3g}} (slope "
                                  f"{'n/a' if e is None else f'{e:.2f}'})<extra></extra>"),
                    row=row, col=col)
        fig.update_xaxes(type="log", title_text=dim, row=2, col=col)
        fig.update_xaxes(type="log", row=1, col=col)
    fig.update_yaxes(type="log", title_text="CPU time (ms)", row=1, col=1)
    fig.update_yaxes(type="log", title_text="peak memory over weights (MiB)", row=2, col=1)
    fig.update_yaxes(type="log", row=1)
    fig.update_yaxes(type="log", row=2)
    base = result["settings"]["base"]
    fig.update_layout(title=f"growth on tiny random Llama-style models (base {base}, batch "
                            f"{result['settings']['batch']})", legend=dict(orientation="h",
                                                                           y=-0.15))
    return fig


def plot(json_path: str, img: str) -> None:
    result = json.loads(Path(json_path).read_text())
    fig = figure(result)
    out = Path(img)
    out.mkdir(parents=True, exist_ok=True)
    html = out / "scale.html"
    fig.write_html(html, include_plotlyjs="cdn")  # small; the PNG is self-contained
    print(f"wrote {html}")
    try:
        from figures import snapshot

        print(f"wrote {snapshot(fig, out / 'scale.png', width=1300, height=700)}")
    except SystemExit as err:  # no chromium: try kaleido, else HTML only
        try:
            fig.write_image(out / "scale.png", width=1300, height=700)
            print(f"wrote {out / 'scale.png'} (kaleido)")
        except Exception:  # noqa: BLE001 - PNG is optional
            print(f"no PNG ({err}; kaleido not available either)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/scale.json")
    ap.add_argument("--plot", metavar="JSON", help="draw the figure of a scale.json and exit")
    ap.add_argument("--img", default="docs/img", help="where --plot writes scale.html/.png")
    ap.add_argument("--quick", action="store_true",
                    help="two sizes per dimension (a smoke test, not for the docs)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable timings on a shared machine)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sweeps = QUICK if args.quick else SWEEPS
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        memory_worker(sweeps)
        return 0
    if args.plot:
        plot(args.plot, args.img)
        return 0
    from fvlens.provenance import machine, versions

    t0 = time.perf_counter()
    raw = []
    for dim, p in points(sweeps):
        model, batch, mean_z = build(_settings(dim, p))
        raw.append({"dim": dim, "settings": p,
                    "seconds": {n: seconds(call(model, batch, mean_z, n)) for n in CALLS}})
        print(f"{dim}={p[dim]}: " + "  ".join(f"{n} {raw[-1]['seconds'][n] * 1e3:.1f} ms"
                                               for n in CALLS), file=sys.stderr)
    timing_s = time.perf_counter() - t0
    mem = run_isolated(Path(__file__), "--worker", "--threads", str(args.threads),
                       *(["--quick"] if args.quick else []))
    for row, m in zip(raw, mem):
        row["weights_bytes"] = m["weights_bytes"]
        row["peak_increment_bytes"] = {n: m[n]["peak_increment_bytes"] for n in CALLS}
        row["peak_bytes"] = {n: m[n]["peak_bytes"] for n in CALLS}
    result = {
        "benchmark": "scale",
        "settings": {"base": BASE, "sweeps": sweeps, "batch": BATCH, "d_vocab": D_VOCAB,
                     "d_head": f"{D_HEAD} (d_model sweep: d_model / n_heads)",
                     "d_mlp": "4 * d_model", "architecture": "llama-style: RMSNorm, rotary, "
                     "gated SiLU MLP, no GQA", "dtype": str(torch.get_default_dtype()),
                     "torch_threads": args.threads},
        "memory_method": "VmHWM - VmRSS around each call in one fresh process with "
                         "MALLOC_MMAP_THRESHOLD_=65536 (benchmarks/memory.py)",
        "exponents": exponents(raw, sweeps),
        "points": raw,
        "seconds": {"timing": timing_s, "total": time.perf_counter() - t0},
        "machine": machine(), "versions": versions(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["exponents"], indent=1))
    print(f"wrote {out} in {result['seconds']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
