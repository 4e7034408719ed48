"""Figures for head scores and for the ``results.json`` that ``fvlens run`` writes.

Every function returns a ``plotly.graph_objects.Figure`` built from plain data (no model), so a
figure can be remade from saved results; ``save`` writes it as self-contained HTML or as PNG.
Optional parts of the results (instruction accuracy, sweeps, a selection method) are skipped
when absent; a figure with nothing to show raises a ValueError saying what was looked for.
See ``docs/figures.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from jaxtyping import Float
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from torch import Tensor

from fvlens.heads.scores import Head, HeadScores

__all__ = ["as_json", "head_map", "head_map_compare", "k_sweep", "layer_sweep", "save", "scale_sweep",
           "task_bars", "timing", "token_relevance"]

PALETTE = qualitative.Plotly
MEAN_WIDTH = 4   # the across-task mean line is drawn thicker than the per-task lines
TASK_WIDTH = 1.5
DASHES = ("solid", "dash", "dot", "dashdot")
# Marker styles of head_map_compare: shared / only in a / only in b.
COMPARE_STYLE = {"shared": ("circle", "#2ca02c"), "only_a": ("triangle-up", "#ff7f0e"),
                 "only_b": ("square", "#d62728")}


# -- helpers -----------------------------------------------------------------------------------

def as_json(results: Any) -> Any:
    """A ``fvlens.results.RunResult`` as its results.json dictionary; anything else as is."""
    return results.to_json() if hasattr(results, "to_json") else results


def _tasks(results: Mapping[str, Any]) -> dict[str, dict]:
    results = as_json(results)
    tasks = results.get("tasks") if isinstance(results, Mapping) else None
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError("results has no 'tasks'; pass the dict loaded from the results.json "
                         "that `fvlens run` writes (json.load(open('results.json')))")
    return dict(tasks)


def _methods(tasks: Mapping[str, dict]) -> list[str]:
    found: dict[str, None] = {}
    for rec in tasks.values():
        found.update(dict.fromkeys(rec.get("steered") or {}))
        found.update(dict.fromkeys(rec.get("k_sweep") or {}))
    return list(found)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _describe(scores: HeadScores) -> str:
    tasks = ", ".join(scores.tasks) if len(scores.tasks) <= 3 else f"{len(scores.tasks)} tasks"
    return f"{scores.method} · {tasks} · {scores.prompt_mode} · n={scores.n_samples}"


def _heatmap(scores: HeadScores, **kw: Any) -> go.Heatmap:
    rank = scores.rank().tolist()
    values = scores.scores.double().tolist()
    text = [[f"layer {layer}, head {head}<br>score {values[layer][head]:.4g}<br>"
             f"rank {rank[layer][head]}" for head in range(scores.n_heads)]
            for layer in range(scores.n_layers)]
    return go.Heatmap(z=values, x=list(range(scores.n_heads)), y=list(range(scores.n_layers)),
                      text=text, hovertemplate="%{text}<extra></extra>", colorscale="Viridis",
                      **kw)


def _markers(heads: Sequence[Head], name: str, symbol: str, color: str, *, outline: str = "black",
             **kw: Any) -> go.Scatter:
    return go.Scatter(x=[h for _, h in heads], y=[layer for layer, _ in heads], mode="markers",
                      name=name,
                      marker=dict(symbol=symbol, color=color, size=11,
                                  line=dict(width=1.5, color=outline)),
                      text=[f"layer {layer}, head {head}" for layer, head in heads],
                      hovertemplate="%{text}<extra>" + name + "</extra>", **kw)


def _axes(fig: go.Figure, n_layers: int, n_heads: int, **kw: Any) -> None:
    ticks = dict(tickmode="linear", dtick=1) if n_heads <= 32 else {}
    fig.update_xaxes(title_text="head", range=[-0.5, n_heads - 0.5], **ticks, **kw)
    fig.update_yaxes(title_text="layer", range=[-0.5, n_layers - 0.5], **kw)


# -- head maps ---------------------------------------------------------------------------------

def head_map(scores: HeadScores, *, k: int = 20, title: str | None = None) -> go.Figure:
    """Layer × head heatmap of scores with the top-``k`` heads marked.

    Args:
        scores: the head scores (x = head, y = layer, layer 0 at the bottom).
        k: heads to mark (0 = none).
        title: figure title; default names method, tasks, prompt mode and sample count.

    Returns:
        Figure: a Heatmap (hover: layer, head, score, rank), then a Scatter of the top-k.
    """
    top = scores.top_k(k)
    fig = go.Figure(_heatmap(scores, colorbar=dict(title=dict(text="score"))))
    if top:
        fig.add_trace(_markers(top, f"top-{k}", "circle-open", "white", outline="white",
                               showlegend=True))
    fig.update_layout(title=title if title is not None else f"{_describe(scores)} · top-{k} marked",
                      legend=dict(orientation="h", y=-0.15))
    _axes(fig, scores.n_layers, scores.n_heads)
    return fig


def head_map_compare(a: HeadScores, b: HeadScores, *, k: int = 20,
                     names: tuple[str, str] | None = None) -> go.Figure:
    """Two head selections side by side, marking heads shared by their top-``k`` and not.

    As in Pham et al., Figure 3 (AIE vs AttnLRP). Both panels carry all three marker sets so
    each selection's heads can be read against the other's scores.

    Args:
        a: first scores (left panel).
        b: second scores of the same model (right panel).
        k: heads taken from each.
        names: labels of a and b; default their methods (plus prompt mode if the methods agree).

    Returns:
        Figure: Heatmap a, Heatmap b, then per panel Scatters "shared", "only a", "only b"
        (empty sets skipped); legend entries carry the counts.
    """
    result = a.overlap(b, k)
    if names is None:
        names = (a.method, b.method)
        if a.method == b.method:
            names = (f"{a.method} ({a.prompt_mode})", f"{b.method} ({b.prompt_mode})")
        if names[0] == names[1]:
            names = (f"A: {names[0]}", f"B: {names[1]}")
    groups = {"shared": result["shared"], "only_a": result["only_self"],
              "only_b": result["only_other"]}
    labels = {"shared": "shared", "only_a": f"only {names[0]}", "only_b": f"only {names[1]}"}
    fig = make_subplots(rows=1, cols=2, subplot_titles=list(names), horizontal_spacing=0.12)
    fig.add_trace(_heatmap(a, colorbar=dict(x=0.44, title=dict(text="score"))), row=1, col=1)
    fig.add_trace(_heatmap(b, colorbar=dict(x=1.0, title=dict(text="score"))), row=1, col=2)
    for col in (1, 2):
        for key, heads in groups.items():
            if not heads:
                continue
            symbol, color = COMPARE_STYLE[key]
            fig.add_trace(_markers(heads, f"{labels[key]} ({len(heads)})", symbol, color,
                                   legendgroup=key, showlegend=col == 1), row=1, col=col)
    fig.update_layout(title=f"top-{k}: {len(groups['shared'])} shared, Jaccard "
                            f"{result['jaccard']:.2f}",
                      legend=dict(orientation="h", y=-0.15))
    _axes(fig, a.n_layers, a.n_heads)
    return fig


# -- results.json ------------------------------------------------------------------------------

def task_bars(results: Mapping[str, Any]) -> go.Figure:
    """Grouped top-1 accuracy bars per task: baselines, then every (selection × injection).

    Args:
        results: the ``results.json`` dict of ``fvlens run``.

    Returns:
        Figure: one Bar per series ("zero-shot", "ICL", "instruction", then e.g. "aie fv"),
        each over the tasks that report it; missing series are skipped.
    """
    tasks = _tasks(results)
    series: dict[str, dict[str, float]] = {}
    for label, key in (("zero-shot", "zero_shot_top1"), ("ICL", "icl_top1"),
                       ("instruction", "instruction_top1")):
        series[label] = {t: rec[key] for t, rec in tasks.items() if _number(rec.get(key))}
    for task, rec in tasks.items():
        for method, injections in (rec.get("steered") or {}).items():
            for injection, out in (injections or {}).items():
                if isinstance(out, Mapping) and _number(out.get("top1")):
                    series.setdefault(f"{method} {injection}", {})[task] = out["top1"]
    series = {label: vals for label, vals in series.items() if vals}
    if not series:
        raise ValueError("nothing to plot: no task has zero_shot_top1, icl_top1, "
                         "instruction_top1 or steered[method][injection]['top1']")
    fig = go.Figure()
    for i, (label, vals) in enumerate(series.items()):
        fig.add_trace(go.Bar(name=label, x=list(vals), y=list(vals.values()),
                             marker_color=PALETTE[i % len(PALETTE)],
                             hovertemplate="%{x}<br>" + label + ": %{y:.3f}<extra></extra>"))
    fig.update_layout(barmode="group",
                      title=f"top-1 accuracy · {as_json(results).get('model', '')}",
                      xaxis_title="task", yaxis=dict(title="top-1 accuracy", range=[0, 1.02]))
    return fig


def _sweep_figure(curves: dict[str, dict[str, dict[str, float]]], *, x_title: str,
                  title: str, x_log: bool = False) -> go.Figure:
    """Per-task thin lines and a thick across-task mean, for each injection.

    ``curves[injection][task]`` maps x (a JSON key, e.g. "16" or "0.5") to accuracy. The mean
    at an x averages the tasks that report that x.
    """
    fig = go.Figure()
    task_names = list(dict.fromkeys(t for per in curves.values() for t in per))
    for j, (injection, per_task) in enumerate(curves.items()):
        dash = DASHES[j % len(DASHES)]
        pooled: dict[float, list[float]] = {}
        for task, sweep in per_task.items():
            points = sorted((float(x), y) for x, y in sweep.items())
            for x, y in points:
                pooled.setdefault(x, []).append(y)
            color = PALETTE[task_names.index(task) % len(PALETTE)]
            fig.add_trace(go.Scatter(
                x=[x for x, _ in points], y=[y for _, y in points], mode="lines+markers",
                name=f"{task} ({injection})", legendgroup=injection,
                line=dict(width=TASK_WIDTH, dash=dash, color=color), opacity=0.6,
                hovertemplate=f"{task} ({injection})<br>" + "%{x}: %{y:.3f}<extra></extra>"))
        xs = sorted(pooled)
        fig.add_trace(go.Scatter(
            x=xs, y=[sum(pooled[x]) / len(pooled[x]) for x in xs], mode="lines+markers",
            name=f"mean {injection} ({len(per_task)} tasks)", legendgroup=injection,
            line=dict(width=MEAN_WIDTH, dash=dash, color="black"),
            hovertemplate=f"mean ({injection})<br>" + "%{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis=dict(title=x_title, type="log" if x_log else "linear"),
                      yaxis=dict(title="top-1 accuracy", range=[0, 1.02]))
    return fig


def _clean_sweep(sweep: Any) -> dict[str, float]:
    if not isinstance(sweep, Mapping):
        return {}
    return {x: y for x, y in sweep.items() if _number(y)}


def _steered_sweeps(results: Mapping[str, Any], method: str, key: str) -> dict:
    tasks = _tasks(results)
    curves: dict[str, dict[str, dict[str, float]]] = {}
    for task, rec in tasks.items():
        for injection, out in ((rec.get("steered") or {}).get(method) or {}).items():
            sweep = _clean_sweep(out.get(key) if isinstance(out, Mapping) else None)
            if sweep:
                curves.setdefault(injection, {})[task] = sweep
    if not curves:
        raise ValueError(f"nothing to plot: no task has steered[{method!r}][injection][{key!r}]; "
                         f"methods in these results: {_methods(tasks)}")
    return curves


def layer_sweep(results: Mapping[str, Any], *, method: str = "aie") -> go.Figure:
    """Top-1 accuracy vs injection layer, per task and averaged over tasks (thick line).

    Args:
        results: the ``results.json`` dict of ``fvlens run``.
        method: the head-selection method whose vectors were injected.

    Returns:
        Figure: per injection ("fv", "dfv", ...) one Scatter per task, then its mean.
    """
    curves = _steered_sweeps(results, method, "layer_sweep")
    return _sweep_figure(curves, x_title="injection layer",
                         title=f"accuracy vs injection layer · {method}")


def scale_sweep(results: Mapping[str, Any], *, method: str = "aie") -> go.Figure:
    """Top-1 accuracy vs the scale the vector is multiplied by, per task and mean.

    Args:
        results: the ``results.json`` dict of ``fvlens run``.
        method: the head-selection method.

    Returns:
        Figure: per injection one Scatter per task, then its mean (thick).
    """
    curves = _steered_sweeps(results, method, "scale_sweep")
    return _sweep_figure(curves, x_title="scale", title=f"accuracy vs vector scale · {method}")


def k_sweep(results: Mapping[str, Any], *, method: str = "aie") -> go.Figure:
    """Top-1 accuracy vs the number of heads K the vector is built from.

    Args:
        results: the ``results.json`` dict of ``fvlens run``.
        method: the head-selection method.

    Returns:
        Figure: per injection one Scatter per task, then its mean (thick).
    """
    tasks = _tasks(results)
    curves: dict[str, dict[str, dict[str, float]]] = {}
    for task, rec in tasks.items():
        for injection, sweep in ((rec.get("k_sweep") or {}).get(method) or {}).items():
            sweep = _clean_sweep(sweep)
            if sweep:
                curves.setdefault(injection, {})[task] = sweep
    if not curves:
        raise ValueError(f"nothing to plot: no task has k_sweep[{method!r}][injection]; "
                         f"methods in these results: {_methods(tasks)}")
    return _sweep_figure(curves, x_title="K (heads)", title=f"accuracy vs K · {method}")


def timing(results: Mapping[str, Any]) -> go.Figure:
    """Throughput (samples/min) per head-selection method, on a log axis.

    Args:
        results: the ``results.json`` dict of ``fvlens run``; reads ``results["timing"]``.

    Returns:
        Figure: one Bar, x = method (``forward`` is the plain forward-pass reference).
    """
    results = as_json(results)
    entries = results.get("timing") if isinstance(results, Mapping) else None
    rates: dict[str, float] = {}
    for name, rec in (entries or {}).items():
        if not isinstance(rec, Mapping):
            continue
        rate = rec.get("samples_per_min")
        if not _number(rate) and _number(rec.get("samples")) and _number(rec.get("seconds")) \
                and rec["seconds"] > 0:
            rate = 60.0 * rec["samples"] / rec["seconds"]
        if _number(rate):
            if rate <= 0:
                raise ValueError(f"timing[{name!r}] has samples/min {rate}; a log axis needs > 0")
            rates[name] = float(rate)
    if not rates:
        raise ValueError("nothing to plot: results has no timing[method]['samples_per_min'] "
                         "(or 'samples' and 'seconds')")
    colors = ["#7f7f7f" if name == "forward" else PALETTE[i % len(PALETTE)]
              for i, name in enumerate(rates)]
    fig = go.Figure(go.Bar(x=list(rates), y=list(rates.values()), marker_color=colors,
                           text=[f"{r:.3g}" for r in rates.values()], textposition="outside",
                           hovertemplate="%{x}: %{y:.4g} samples/min<extra></extra>"))
    # Bars on a log axis grow from the bottom of its range: start a decade below the smallest
    # rate's decade, so that close rates do not shrink to slivers of an auto-fitted range.
    low = math.floor(math.log10(min(rates.values()))) - 1
    high = math.log10(max(rates.values())) + 0.3  # room for the text above the bar
    fig.update_layout(title="throughput per head-selection method", xaxis_title="method",
                      yaxis=dict(title="samples / min", type="log", range=[low, high]))
    return fig


# -- token relevance ---------------------------------------------------------------------------

def _show_token(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "␣")


def token_relevance(tokens: Sequence[str],
                    relevance: Float[Tensor, "pos"] | Sequence[float]) -> go.Figure:
    """Relevance per input token as bars, red for positive and blue for negative.

    Args:
        tokens: the token strings (tick labels; spaces shown as ␣, newlines as \\n).
        relevance: ``[pos]`` one value per token, e.g. ``Relevance`` of an AttnLRP explain.

    Returns:
        Figure: one Bar, x = position, tick labels = tokens, colour scale RdBu reversed
        centred on 0.
    """
    values = relevance.detach().double().cpu().tolist() if isinstance(relevance, Tensor) \
        else [float(v) for v in relevance]
    tokens = list(tokens)
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} relevance values; pass one "
                         f"value per token (model.to_str_tokens(prompt) gives the tokens)")
    if not values:
        raise ValueError("nothing to plot: no tokens")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("relevance has NaN/inf values; check the explain() call that made it")
    bound = max(abs(v) for v in values) or 1.0
    fig = go.Figure(go.Bar(
        x=list(range(len(values))), y=values,
        marker=dict(color=values, colorscale="RdBu_r", cmin=-bound, cmax=bound, cmid=0,
                    colorbar=dict(title=dict(text="relevance"))),
        customdata=[_show_token(t) for t in tokens],
        hovertemplate="%{customdata} (pos %{x})<br>relevance %{y:.4g}<extra></extra>"))
    fig.update_layout(title="relevance per token", yaxis_title="relevance",
                      xaxis=dict(tickmode="array", tickvals=list(range(len(values))),
                                 ticktext=[_show_token(t) for t in tokens], tickangle=-45))
    return fig


# -- saving ------------------------------------------------------------------------------------

def save(fig: go.Figure, path: str | Path) -> Path:
    """Write a figure as self-contained HTML (plotly.js inlined) or as PNG.

    Args:
        fig: the figure.
        path: ``.html`` or ``.png`` file; parent folders are created.

    Returns:
        The path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".html", ".png"):
        raise ValueError(f"cannot save {path.name}: use a .html or .png file name")
    if suffix == ".png":
        try:
            import kaleido  # noqa: F401
        except ImportError:
            raise RuntimeError("saving PNG needs kaleido: pip install 'fvlens[png]' "
                               "(or save as .html, which needs nothing)") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".html":
        fig.write_html(str(path), include_plotlyjs=True)
    else:
        fig.write_image(str(path))
    return path
