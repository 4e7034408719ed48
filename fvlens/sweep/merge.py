"""Gathering a sweep's finished jobs into one table, one merged JSON and an HTML page.

One row per (job, task, selection method, injection): the job's grid coordinates, the
reference and zero-shot baselines, and the steered top-1. Figures: steered top-1 per model and
task (mean over seeds, min–max bars), and the top-K head overlap (Jaccard) between models of
the same shape, on the same task, method, K and seed.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

__all__ = ["COLUMNS", "MergedSweep", "format_table", "head_overlap", "merge", "rows_of",
           "write_merged"]

COLUMNS = ("model", "task", "select", "inject", "k", "seed", "n", "reference_top1",
           "zero_shot_top1", "steered_top1", "where", "key")
MERGED_FILE = "sweep.json"
REPORT_FILE = "report.html"


def rows_of(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The table rows of one job's results.json."""
    sweep = results.get("sweep", {})
    label, key = dict(sweep.get("label", {})), sweep.get("key", "")
    mode = results.get("settings", {}).get("prompt_mode", "icl")
    rows = []
    for task, rec in results.get("tasks", {}).items():
        base = {"model": label.get("model", results.get("model", "")), "task": task,
                "k": label.get("k"), "seed": label.get("seed"), "n": rec.get("n", 0),
                "reference_top1": rec.get(f"{mode}_top1"),
                "zero_shot_top1": rec.get("zero_shot_top1"), "key": key}
        steered = rec.get("steered", {})
        if not steered:
            rows.append(base | {"select": label.get("select", ""),
                                "inject": label.get("inject", ""), "steered_top1": None,
                                "where": rec.get("skipped", "")[:40]})
        for method, by_inject in steered.items():
            for inject, res in by_inject.items():
                where = f"L{res['layer']}" if "layer" in res else f"x{res.get('scale', 1):g}"
                rows.append(base | {"select": method, "inject": inject,
                                    "steered_top1": res.get("top1"), "where": where})
    return rows


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """A plain-text table (floats to 3 decimals)."""
    def fmt(v: Any) -> str:
        return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _heads(results: Mapping[str, Any]) -> dict[tuple[str, str], frozenset]:
    return {(task, method): frozenset(tuple(h) for h in heads)
            for task, rec in results.get("tasks", {}).items()
            for method, heads in rec.get("heads", {}).items()}


def _shape(results: Mapping[str, Any]) -> tuple[int, ...] | None:
    for rec in results.get("tasks", {}).values():
        for data in rec.get("head_scores", {}).values():
            scores = data.get("scores")
            if scores:
                return (len(scores), len(scores[0]))
    return None


def head_overlap(jobs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean Jaccard overlap of the top-K heads between every two models of the same shape.

    Pairs are matched on task, selection method, K and seed. Returns ``{"models": [...],
    "jaccard": [[...]], "pairs": [[...]]}`` (None where no pair was comparable).
    """
    by_model: dict[str, dict[tuple, frozenset]] = defaultdict(dict)
    shapes: dict[str, tuple | None] = {}
    for res in jobs:
        label = res.get("sweep", {}).get("label", {})
        model = label.get("model", res.get("model", ""))
        shapes.setdefault(model, _shape(res))
        for (task, method), heads in _heads(res).items():
            by_model[model][(task, method, label.get("k"), label.get("seed"))] = heads
    models = sorted(by_model)
    jaccard, pairs = [], []
    for a in models:
        row, counts = [], []
        for b in models:
            shared = set(by_model[a]) & set(by_model[b])
            if shapes[a] != shapes[b] or shapes[a] is None or not shared:
                row.append(None)
                counts.append(0)
                continue
            vals = [len(by_model[a][c] & by_model[b][c]) / max(1, len(by_model[a][c] |
                                                                      by_model[b][c]))
                    for c in shared]
            row.append(statistics.fmean(vals))
            counts.append(len(vals))
        jaccard.append(row)
        pairs.append(counts)
    return {"models": models, "jaccard": jaccard, "pairs": pairs}


def _accuracy_figure(rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r.get("steered_top1") is not None:
            groups[(r["model"], r["select"], r["inject"], r["k"], r["task"])].append(
                r["steered_top1"])
    fig = go.Figure()
    series = sorted({g[:4] for g in groups}, key=str)
    for model, select, inject, k in series:
        tasks = sorted(g[4] for g in groups if g[:4] == (model, select, inject, k))
        vals = [groups[(model, select, inject, k, t)] for t in tasks]
        mean = [statistics.fmean(v) for v in vals]
        fig.add_trace(go.Bar(
            name=f"{model} · {select}/{inject} · K={k}", x=tasks, y=mean,
            error_y=dict(type="data", symmetric=False,
                         array=[max(v) - m for v, m in zip(vals, mean)],
                         arrayminus=[m - min(v) for v, m in zip(vals, mean)])))
    fig.update_layout(barmode="group", title="steered zero-shot top-1 (mean over seeds, "
                      "min–max)", yaxis=dict(title="top-1", range=[0, 1]),
                      xaxis=dict(title="task"), legend=dict(orientation="h", y=-0.25))
    return fig


def _overlap_figure(overlap: Mapping[str, Any]) -> go.Figure:
    models = overlap["models"]
    text = [[("" if v is None else f"{v:.2f} (n={n})") for v, n in zip(row, counts)]
            for row, counts in zip(overlap["jaccard"], overlap["pairs"])]
    fig = go.Figure(go.Heatmap(z=overlap["jaccard"], x=models, y=models, zmin=0, zmax=1,
                               colorscale="Viridis", text=text, texttemplate="%{text}",
                               colorbar=dict(title="Jaccard")))
    fig.update_layout(title="top-K head overlap between models (same task, method, K, seed)")
    return fig


class MergedSweep:
    """A sweep's finished jobs: their results, table rows and head overlap."""

    def __init__(self, jobs: list[dict[str, Any]], missing: list[str]) -> None:
        self.jobs = jobs
        self.missing = missing
        self.rows = [row for res in jobs for row in rows_of(res)]
        self.rows.sort(key=lambda r: tuple(str(r.get(c)) for c in COLUMNS))
        self.overlap = head_overlap(jobs)

    def figures(self) -> list[go.Figure]:
        figs = [_accuracy_figure(self.rows)]
        if len(self.overlap["models"]) > 1:
            figs.append(_overlap_figure(self.overlap))
        return figs

    def to_json(self) -> dict[str, Any]:
        return {"n_jobs": len(self.jobs), "unfinished": self.missing, "rows": self.rows,
                "head_overlap": self.overlap,
                "jobs": {res.get("sweep", {}).get("key", str(i)): res
                         for i, res in enumerate(self.jobs)}}


def merge(out: str | Path) -> MergedSweep:
    """Read every ``out/jobs/*/results.json`` of a sweep.

    Raises:
        FileNotFoundError: when ``out`` holds no job folders.
    """
    jobs_dir = Path(out) / "jobs"
    folders = sorted(p for p in jobs_dir.iterdir() if p.is_dir()) if jobs_dir.is_dir() else []
    if not folders:
        raise FileNotFoundError(f"no jobs under {jobs_dir}: pass the --out folder of a "
                                f"`fvlens sweep GRID.toml` run")
    jobs, missing = [], []
    for folder in folders:
        path = folder / "results.json"
        if path.is_file():
            jobs.append(json.loads(path.read_text()))
        else:
            missing.append(folder.name)
    return MergedSweep(jobs, missing)


def write_merged(merged: MergedSweep, out: str | Path) -> tuple[Path, Path]:
    """Write ``out/sweep.json`` and ``out/report.html``; return their paths."""
    out = Path(out)
    data = out / MERGED_FILE
    tmp = data.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged.to_json(), indent=1, default=str))
    tmp.replace(data)
    parts = [f"<h1>fvlens sweep: {len(merged.jobs)} finished jobs"
             f"{f', {len(merged.missing)} unfinished' if merged.missing else ''}</h1>",
             f"<pre>{_escape(format_table(merged.rows))}</pre>"]
    for i, fig in enumerate(merged.figures()):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0),
                                 default_height="520px"))
    page = out / REPORT_FILE
    page.write_text("<!doctype html>\n<html><head><meta charset='utf-8'><title>fvlens sweep"
                    "</title></head><body>\n" + "\n".join(parts) + "\n</body></html>\n",
                    encoding="utf-8")
    return data, page


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

