"""One self-contained HTML page for a run: ``DIR/results.json`` -> ``DIR/report.html``.

The page holds the settings and versions, a per-task accuracy table, the figures of
``fvlens.plots`` and a table of failures per task and (selection × injection), as in Pham et al.,
Table 6. plotly.js is inlined once, so the page works offline. Every part of ``results.json``
is optional: a section or figure whose data is absent is left out. See ``docs/results-json.md``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from fvlens import plots
from fvlens.heads.scores import HeadScores

__all__ = ["build_report", "write_report"]

RESULTS_NAME = "results.json"
REPORT_NAME = "report.html"
DEFAULT_K = 20            # heads marked on a head map when settings has no "k" (as `fvlens run`)
MAX_FAILURES = 50         # failure rows shown per task and combination; the rest are counted
FIGURE_HEIGHT = 460       # px; head maps grow with the number of layers
HEAD_MAP_ROW_PX = 16
# plotly figures read this before plotly.js loads (as plotly's own write_html does)
_PLOTLY_CONFIG = "window.PlotlyConfig = {MathJaxConfig: 'local'};"
_BASELINES = (("zero-shot", "zero_shot_top1"), ("ICL", "icl_top1"),
              ("instruction", "instruction_top1"))

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td small { color: #777; }
code { white-space: pre; background: #f6f6f6; padding: 0 .2em; }
.meta { display: flex; gap: 2em; flex-wrap: wrap; }
.note { color: #a55; }
figure { margin: 1em 0; }
nav { margin-bottom: 1em; }
"""


# -- small helpers -----------------------------------------------------------------------------

def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any) -> str:
    """A table cell's text: floats to 3 decimals, containers as JSON, all escaped."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else _esc(value)
    if isinstance(value, (list, dict)):
        return _esc(json.dumps(value))
    return _esc(value)


def _mapping(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _table(header: list[str], rows: list[list[str]], *, cls: str = "") -> str:
    """An HTML table; ``header`` is escaped here, ``rows`` hold ready HTML cells (``<td>...``)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "\n".join(f"<tr>{''.join(cells)}</tr>" for cells in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _td(value: Any, *, num: bool = False) -> str:
    return f'<td class="num">{_fmt(value)}</td>' if num else f"<td>{_fmt(value)}</td>"


def _key_values(title: str, data: Any) -> str:
    data = _mapping(data)
    if not data:
        return ""
    rows = [[f"<th>{_esc(k)}</th>", _td(v)] for k, v in data.items()]
    return f"<div><h3>{_esc(title)}</h3>{_table(['key', 'value'], rows, cls=title)}</div>"


def _combinations(tasks: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(selection, injection) pairs found under any task's ``steered``, in first-seen order."""
    found: dict[tuple[str, str], None] = {}
    for rec in tasks.values():
        for method, injections in _mapping(_mapping(rec).get("steered")).items():
            for injection in _mapping(injections):
                found[(method, injection)] = None
    return list(found)


def _head_text(heads: Any) -> tuple[int, str]:
    """``[[layer, head], ...]`` -> (count, "L20H5, L14H2")."""
    pairs = [h for h in heads if isinstance(h, list) and len(h) == 2] \
        if isinstance(heads, list) else []
    return len(pairs), ", ".join(f"L{layer}H{head}" for layer, head in pairs)


def _methods(tasks: Mapping[str, Any]) -> list[str]:
    found: dict[str, None] = {}
    for rec in tasks.values():
        for key in ("steered", "k_sweep"):
            found.update(dict.fromkeys(_mapping(_mapping(rec).get(key))))
    return list(found)


# -- sections ----------------------------------------------------------------------------------

def _settings_section(results: Mapping[str, Any]) -> str:
    known = {"settings", "versions", "machine", "tasks", "timing"}
    run = {k: v for k, v in results.items() if k not in known and not isinstance(v, Mapping)}
    parts = [_key_values("run", run), _key_values("settings", results.get("settings")),
             _key_values("versions", results.get("versions")),
             _key_values("machine", results.get("machine"))]
    parts = [p for p in parts if p]
    if not parts:
        return ""
    return '<div class="meta">' + "\n".join(parts) + "</div>"


def _ci(value: Any) -> str:
    """`` [lo, hi]`` of a 95% interval, or "" when absent or malformed."""
    if isinstance(value, list) and len(value) == 2 and all(_number(v) for v in value):
        return f" <small>[{value[0]:.2f}, {value[1]:.2f}]</small>"
    return ""


def _accuracy_cell(rec: Mapping[str, Any], key: str) -> str:
    """A baseline's top-1 with its 95% interval (``key`` ends in ``_top1``)."""
    value = rec.get(key)
    if not _number(value):
        return _td(value, num=True)
    return f'<td class="num">{_fmt(float(value))}{_ci(rec.get(key + "_ci95"))}</td>'


def _combo_cell(out: Any) -> str:
    """top-1 of one (selection × injection), with the injection layer and scale if given."""
    out = _mapping(out)
    if not _number(out.get("top1")):
        return _td(None, num=True)
    extra = []
    if _number(out.get("layer")):
        extra.append(f"L{out['layer']}")
    if _number(out.get("scale")):
        extra.append(f"×{out['scale']:g}")
    note = f" <small>{_esc(' '.join(extra))}</small>" if extra else ""
    return f'<td class="num">{_fmt(float(out["top1"]))}{_ci(out.get("top1_ci95"))}{note}</td>'


def _summary_section(tasks: Mapping[str, Any]) -> str:
    if not tasks:
        return ""
    baselines = [(label, key) for label, key in _BASELINES
                 if any(key in _mapping(rec) for rec in tasks.values())]
    combos = _combinations(tasks)
    skipped = any("skipped" in _mapping(rec) or _mapping(rec).get("flags")
                  for rec in tasks.values())
    header = ["task", "n"] + [label for label, _ in baselines] + [f"{m} {i}" for m, i in combos]
    header += ["note"] if skipped else []
    rows = []
    for task, rec in tasks.items():
        rec = _mapping(rec)
        steered = _mapping(rec.get("steered"))
        cells = [f"<th>{_esc(task)}</th>", _td(rec.get("n"), num=True)]
        cells += [_accuracy_cell(rec, key) for _, key in baselines]
        cells += [_combo_cell(_mapping(steered.get(m)).get(i)) for m, i in combos]
        if skipped:
            note = rec.get("skipped")
            flags = rec.get("flags") if isinstance(rec.get("flags"), list) else []
            text = (f"skipped: {_esc(note)}" if note is not None
                    else "<br>".join(f"⚠ {_esc(f)}" for f in flags))
            cells.append(f'<td class="note">{text}</td>')
        rows.append(cells)
    legend = ("<p>First-token top-1 accuracy on the test queries, with its 95% Wilson "
              "interval in brackets. Steered columns are <em>selection injection</em>; "
              "<small>L</small> is the layer the vector was added at, <small>×</small> its "
              "scale. Flagged tasks (⚠) should not be read at face value.</p>"
              if combos else "")
    return legend + _table(header, rows, cls="summary")


def _heads_section(tasks: Mapping[str, Any]) -> str:
    rows = []
    for task, rec in tasks.items():
        rec = _mapping(rec)
        overlap = _mapping(rec.get("head_overlap"))
        for method, heads in _mapping(rec.get("heads")).items():
            count, text = _head_text(heads)
            rows.append([f"<th>{_esc(task)}</th>", _td(method), _td(count, num=True),
                         f"<td>{_esc(text)}</td>"])
        if overlap:
            count, text = _head_text(overlap.get("shared"))
            jac = overlap.get("jaccard")
            jac = _fmt(float(jac)) if _number(jac) else "–"
            rows.append([f"<th>{_esc(task)}</th>", "<td><em>overlap</em></td>",
                         _td(count, num=True), f"<td>Jaccard {jac}; shared: {_esc(text)}</td>"])
    if not rows:
        return ""
    return _table(["task", "selection", "heads", "(layer, head)"], rows, cls="heads")


def _failures_section(tasks: Mapping[str, Any]) -> str:
    parts = []
    for task, rec in tasks.items():
        groups = []
        for method, per in _mapping(_mapping(rec).get("failures")).items():
            # failures[method][injection] = [...]; a flat failures[name] = [...] is read too
            items = per.items() if isinstance(per, Mapping) else [(None, per)]
            for injection, rows in items:
                if not isinstance(rows, list):
                    continue
                label = method if injection is None else f"{method} {injection}"
                groups.append((label, rows))
        if not groups:
            continue
        parts.append(f"<h3>{_esc(task)}</h3>")
        for label, rows in groups:
            shown = [_mapping(r) for r in rows[:MAX_FAILURES]]
            cells = [[f"<td><code>{_esc(r.get('input', ''))}</code></td>",
                      f"<td><code>{_esc(r.get('target', ''))}</code></td>",
                      f"<td><code>{_esc(r.get('prediction', ''))}</code></td>",
                      _td(r.get("rank"), num=True)] for r in shown]
            more = (f"<p><small>showing {MAX_FAILURES} of {len(rows)}</small></p>"
                    if len(rows) > MAX_FAILURES else "")
            body = _table(["input", "target", "prediction", "target rank"], cells,
                          cls="failures") if rows else "<p>none</p>"
            noun = "failure" if len(rows) == 1 else "failures"
            parts.append(f"<h4>{_esc(label)} ({len(rows)} {noun})</h4>\n{body}{more}")
    if not parts:
        return ""
    return ("<p>Test queries the steered model got wrong: its top "
            "prediction and the rank of the target's first token (0 = top-1).</p>\n"
            + "\n".join(parts))


# -- figures -----------------------------------------------------------------------------------

class _Figures:
    """Collects figure divs; a figure without data is skipped, any other failure is noted."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.count = 0

    def add(self, make: Callable[[], go.Figure], *, height: int = FIGURE_HEIGHT) -> None:
        try:
            fig = make()
        except ValueError as err:
            if not str(err).startswith("nothing to plot"):
                self.parts.append(f'<p class="note">figure skipped: {_esc(err)}</p>')
            return
        self.count += 1
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{self.count}",
                          default_height=f"{height}px")
        self.parts.append(f"<figure>{div}</figure>")

    def heading(self, text: str) -> None:
        self.parts.append(f"<h3>{_esc(text)}</h3>")


def _head_scores(task: str, rec: Mapping[str, Any], figs: _Figures) -> dict[str, HeadScores]:
    out = {}
    for method, data in _mapping(rec.get("head_scores")).items():
        try:
            out[method] = HeadScores.from_json(data)
        except ValueError as err:
            figs.parts.append(f'<p class="note">{_esc(task)}: head_scores[{_esc(method)}] '
                              f"skipped: {_esc(err)}</p>")
    return out


def _figures_section(results: Mapping[str, Any], tasks: Mapping[str, Any]) -> tuple[str, int]:
    figs = _Figures()
    if tasks:
        figs.add(lambda: plots.task_bars(results))
    figs.add(lambda: plots.timing(results))
    for method in _methods(tasks):
        for make in (plots.layer_sweep, plots.k_sweep, plots.scale_sweep):
            figs.add(lambda make=make, method=method: make(results, method=method))
    k = _mapping(results.get("settings")).get("k", DEFAULT_K)
    k = k if isinstance(k, int) and not isinstance(k, bool) and k >= 0 else DEFAULT_K

    def top(hs: HeadScores) -> int:
        return min(k, hs.n_layers * hs.n_heads)

    shown: dict[str, str] = {}      # the head_scores JSON already drawn -> its task
    for task, rec in tasks.items():
        scores = _head_scores(task, _mapping(rec), figs)
        if not scores:
            continue
        figs.heading(f"head scores · {task}")
        # global heads (`--heads global`): every task carries the same aggregated scores
        key = json.dumps(_mapping(rec).get("head_scores"), sort_keys=True)
        if key in shown:
            figs.parts.append(f"<p>The same head scores as {_esc(shown[key])} (shown above).</p>")
            continue
        shown[key] = task
        for hs in scores.values():
            figs.add(lambda hs=hs: plots.head_map(hs, k=top(hs)),
                     height=max(FIGURE_HEIGHT, 150 + HEAD_MAP_ROW_PX * hs.n_layers))
        if len(scores) >= 2:
            a, b = list(scores.values())[:2]
            figs.add(lambda a=a, b=b: plots.head_map_compare(a, b, k=top(a)),
                     height=max(FIGURE_HEIGHT, 150 + HEAD_MAP_ROW_PX * a.n_layers))
    if not figs.parts:
        return "", 0
    return "\n".join(figs.parts), figs.count


# -- public API --------------------------------------------------------------------------------

def build_report(results: dict, *, title: str | None = None) -> str:
    """The HTML text of the report of one run.

    Args:
        results: a ``fvlens.results.RunResult``, or the dict of ``results.json`` written by
            ``fvlens run`` (every key optional: the report shows what is there).
        title: page title; default ``"fvlens report · <model>"``.

    Returns:
        A complete HTML page with plotly.js inlined once (no network needed to view it).
    """
    results = plots.as_json(results)
    if not isinstance(results, Mapping):
        raise ValueError(f"results must be a RunResult or the dict loaded from results.json, got "
                         f"{type(results).__name__}")
    tasks = _mapping(results.get("tasks"))
    if title is None:
        title = f"fvlens report · {results.get('model', 'unknown model')}"
    figures, n_figures = _figures_section(results, tasks)
    sections = [("settings", "Settings and versions", _settings_section(results)),
                ("accuracy", "Accuracy", _summary_section(tasks)),
                ("figures", "Figures", figures),
                ("heads", "Selected heads", _heads_section(tasks)),
                ("failures", "Failures", _failures_section(tasks))]
    sections = [(anchor, name, text) for anchor, name, text in sections if text]
    if sections:
        nav = " · ".join(f'<a href="#{anchor}">{name}</a>' for anchor, name, _ in sections)
        body = f"<nav>{nav}</nav>\n" + "\n\n".join(
            f'<h2 id="{anchor}">{name}</h2>\n{text}' for anchor, name, text in sections)
    else:
        body = "<p>results.json holds no results.</p>"
    plotly_js = f"<script>{_PLOTLY_CONFIG}</script>\n<script>{get_plotlyjs()}</script>\n" \
        if n_figures else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n{plotly_js}</head>\n<body>\n"
            f"<h1>{_esc(title)}</h1>\n{body}\n</body>\n</html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Read ``run_dir/results.json`` and write ``run_dir/report.html``.

    Args:
        run_dir: the output folder of ``fvlens run`` (its ``--out``).

    Returns:
        The path of the report written.
    """
    run_dir = Path(run_dir)
    source = run_dir / RESULTS_NAME
    if not source.is_file():
        hint = ("the folder does not exist" if not run_dir.exists()
                else f"it holds {sorted(p.name for p in run_dir.iterdir())[:10]}")
        raise FileNotFoundError(f"no {RESULTS_NAME} in {run_dir} ({hint}); pass the folder "
                                f"given to `fvlens run --out`")
    try:
        results = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{source} is not valid JSON ({err}); rerun `fvlens run`") from None
    path = run_dir / REPORT_NAME
    path.write_text(build_report(results), encoding="utf-8")
    return path
