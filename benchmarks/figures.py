"""PNG snapshots of the figures behind docs/results.md, drawn from `fvlens run` results.

    python benchmarks/figures.py --default runs/main --both runs/both --out docs/img

Each figure is built with ``fvlens.plots`` from a run's ``results.json``, written as a
self-contained HTML page and photographed by headless Chromium (Debian's ``chromium``; run
``.ci/chromium.sh`` to install it). Static export through kaleido is not needed. The pages
themselves (interactive) are in each run's ``report.html``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import plotly.graph_objects as go

from fvlens import plots
from fvlens.heads.scores import HeadScores

WIDTH, HEIGHT = 1000, 520


def snapshot(fig: go.Figure, path: Path, *, width: int = WIDTH, height: int = HEIGHT) -> Path:
    """Render ``fig`` to a PNG at ``path`` with headless Chromium."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("no chromium: run .ci/chromium.sh (Debian's chromium package)")
    fig = go.Figure(fig).update_layout(width=width, height=height, margin=dict(t=60))
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "fig.html"
        fig.write_html(page, include_plotlyjs=True, full_html=True,
                       config={"displayModeBar": False})
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}",
                        "--virtual-time-budget=5000", f"--screenshot={path.resolve()}",
                        page.as_uri()], check=True, capture_output=True, timeout=120)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--default", required=True, help="a default `fvlens run` directory")
    ap.add_argument("--both", required=True,
                    help="a `fvlens run --select aie,attnlrp` directory")
    ap.add_argument("--task", default="capitalize", help="task of the head maps")
    ap.add_argument("--heads", default="benchmarks/results/heads.json",
                    help="benchmarks/heads.py output for the cost figure (skipped if absent)")
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    default = json.loads((Path(args.default) / "results.json").read_text())
    both = json.loads((Path(args.both) / "results.json").read_text())
    rec = both["tasks"][args.task]
    aie, lrp = (HeadScores.from_json(rec["head_scores"][m]) for m in ("aie", "attnlrp"))
    n_layers = aie.n_layers
    written = [
        snapshot(plots.task_bars(default), out / "task_bars_default.png"),
        snapshot(plots.task_bars(both), out / "task_bars_aie_attnlrp.png"),
        snapshot(plots.layer_sweep(default, method="aie"), out / "layer_sweep_aie.png"),
        snapshot(plots.head_map_compare(aie, lrp, k=20), out / f"head_map_{args.task}.png",
                 height=150 + 22 * n_layers),
        snapshot(plots.timing(both), out / "timing.png", height=400),
    ]
    heads = Path(args.heads)
    if heads.is_file():  # benchmarks/heads.py: the four rates on the same prompts
        h = json.loads(heads.read_text())
        rates = {"forward": h["forward_samples_per_min"],
                 "attnlrp": h["attnlrp_samples_per_min"],
                 "aie fast": h["aie_fast_samples_per_min"],
                 "aie reference": h["aie_reference_samples_per_min"]}
        fig = plots.timing({"timing": {k: {"samples_per_min": v} for k, v in rates.items()}})
        fig.update_layout(title="head-selection cost, benchmarks/heads.py (same 4 prompts)")
        written.append(snapshot(fig, out / "timing_benchmark.png", height=400))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
