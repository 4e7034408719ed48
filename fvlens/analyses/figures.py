"""Figures of the analyses: accuracy vs injection layer and scale, strategy cosines and bars.

Each function reads the dictionary ``fvlens strategies`` writes (``run_strategies`` records)
and returns a plotly figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative

__all__ = ["layer_curves", "scale_curves", "cosine_heatmap", "strategy_bars"]


def _curves(results: Mapping[str, Any], key: str, task: str | None) -> dict[str, dict]:
    tasks = results.get("tasks") or {}
    if task is not None and task not in tasks:
        raise ValueError(f"task {task!r} is not in the results; it has {sorted(tasks)}")
    curves: dict[str, dict] = {}
    for name, rec in tasks.items():
        if task is not None and name != task:
            continue
        for strategy, s in (rec.get("strategies") or {}).items():
            if s.get(key):
                curves[f"{name} · {strategy}" if task is None else strategy] = s[key]
    if not curves:
        raise ValueError(f"nothing to plot: no strategy in the results has {key!r}")
    return curves


def _line_figure(curves: dict[str, dict], x_title: str, title: str, *, x_log: bool = False,
                 baseline: float | None = None) -> go.Figure:
    fig = go.Figure()
    palette = qualitative.Plotly
    for i, (label, sweep) in enumerate(curves.items()):
        xs = sorted(sweep, key=float)
        fig.add_trace(go.Scatter(x=[float(x) for x in xs], y=[sweep[x] for x in xs],
                                 mode="lines+markers", name=label,
                                 line=dict(color=palette[i % len(palette)])))
    if baseline is not None:
        fig.add_hline(y=baseline, line_dash="dot", annotation_text="unsteered zero-shot")
    fig.update_layout(title=title, xaxis_title=x_title,
                      yaxis=dict(title="zero-shot top-1", range=[0, 1.02]))
    if x_log:
        fig.update_xaxes(type="log")
    return fig


def layer_curves(results: Mapping[str, Any], *, task: str | None = None,
                 split: str = "test") -> go.Figure:
    """Accuracy vs injection layer, one line per (task ·) strategy.

    Args:
        results: the dict ``fvlens strategies`` writes.
        task: one task (lines = strategies, with its unsteered baseline), or None for all.
        split: "test" or "val" sweep.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    curves = _curves(results, f"layer_sweep_{split}", task)
    base = None
    if task is not None:
        base = results["tasks"][task].get("zero_shot_top1" if split == "test"
                                          else "zero_shot_val_top1")
    return _line_figure(curves, "injection layer (hook_resid_post)",
                        f"accuracy vs layer ({split}){' · ' + task if task else ''}",
                        baseline=base)


def scale_curves(results: Mapping[str, Any], *, task: str | None = None) -> go.Figure:
    """Test accuracy vs scale at each strategy's best layer."""
    curves = _curves(results, "scale_sweep", task)
    return _line_figure(curves, "scale", f"accuracy vs scale at the best layer"
                        f"{' · ' + task if task else ''}", x_log=True)


def cosine_heatmap(record: dict[str, Any], *, key: str = "cosine", title: str = "") -> go.Figure:
    """Heatmap of a task's strategy cosine matrix (``record[key]`` from ``run_strategies``)."""
    cos = record.get(key)
    if not cos or not cos.get("names"):
        raise ValueError(f"record has no {key!r}; pass a task record of `fvlens strategies`")
    names = cos["names"]
    z = cos["matrix"]
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu",
                               text=[[f"{v:.2f}" for v in row] for row in z],
                               texttemplate="%{text}"))
    fig.update_layout(title=title or f"cosine similarity of the strategies' vectors "
                      f"({key})", yaxis=dict(autorange="reversed"))
    return fig


def strategy_bars(results: dict[str, Any]) -> go.Figure:
    """Test top-1 per task: unsteered zero-shot, ICL and each strategy at its best layer."""
    tasks = results.get("tasks") or {}
    series: dict[str, dict[str, float]] = {"zero-shot": {}, "ICL": {}}
    for t, rec in tasks.items():
        if "zero_shot_top1" in rec:
            series["zero-shot"][t] = rec["zero_shot_top1"]
            series["ICL"][t] = rec["icl_top1"]
        for name, s in (rec.get("strategies") or {}).items():
            series.setdefault(f"{name}", {})[t] = s["test_top1"]
    if not any(series.values()):
        raise ValueError("nothing to plot: no task in the results has test accuracies")
    fig = go.Figure([go.Bar(name=label, x=list(v), y=list(v.values()))
                     for label, v in series.items() if v])
    fig.update_layout(barmode="group", title="zero-shot top-1 at the best layer (test)",
                      yaxis=dict(title="top-1", range=[0, 1.02]))
    return fig
