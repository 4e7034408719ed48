"""Figures: check the data each one carries (traces, values, markers, hover text), not pixels."""

from __future__ import annotations

import copy
import math
import sys

import pytest
import torch

from fvlens import plots
from fvlens.heads import HeadScores


def scores(values, method="aie", prompt_mode="icl"):
    return HeadScores(scores=torch.tensor(values, dtype=torch.float32), method=method,
                      tasks=("antonym",), prompt_mode=prompt_mode, n_samples=8)


GRID_A = [[0.0, 0.1, 0.9],     # layer 0
          [0.5, 0.2, 0.3],     # layer 1
          [0.8, 0.05, 0.7]]    # layer 2
GRID_B = [[0.0, 0.1, 0.2],
          [0.9, 0.8, 0.3],
          [0.7, 0.05, 0.6]]


def results():
    def steered(top1, sweep_shift=0.0):
        return {"fv": {"top1": top1, "top3": top1 + 0.1, "layer": 1,
                       "layer_sweep": {"0": 0.1 + sweep_shift, "2": 0.5 + sweep_shift,
                                       "1": 0.3 + sweep_shift}},
                "dfv": {"top1": top1 - 0.1, "top3": top1,
                        "scale_sweep": {"0.5": 0.1, "1.0": 0.3 + sweep_shift, "2.0": 0.2}}}
    return {
        "model": "tiny", "settings": {"k": 2, "shots": 5}, "versions": {},
        "tasks": {
            "capitalize": {"n": 10, "zero_shot_top1": 0.0, "icl_top1": 0.9,
                           "instruction_top1": 0.2,
                           "steered": {"aie": steered(0.4), "attnlrp": steered(0.35)},
                           "k_sweep": {"aie": {"fv": {"10": 0.3, "20": 0.4, "40": 0.5}}},
                           "heads": {"aie": [[2, 0], [0, 2]]}},
            "antonym": {"n": 10, "zero_shot_top1": 0.1, "icl_top1": 0.7,
                        "steered": {"aie": steered(0.6, sweep_shift=0.2)},
                        "k_sweep": {"aie": {"fv": {"10": 0.5, "20": 0.6, "40": 0.7}}}},
        },
        "timing": {"aie": {"samples": 25, "seconds": 12.0, "samples_per_min": 125.0},
                   "attnlrp": {"samples": 25, "seconds": 1.5},
                   "forward": {"samples": 100, "seconds": 1.0, "samples_per_min": 6000.0}},
    }


# -- head maps -----------------------------------------------------------------------------

def test_head_map_data_and_top_k_markers():
    hs = scores(GRID_A)
    fig = plots.head_map(hs, k=3)
    heat, top = fig.data
    assert heat.type == "heatmap" and top.type == "scatter"
    assert torch.allclose(torch.tensor(heat.z), torch.tensor(GRID_A))
    assert list(heat.x) == [0, 1, 2] and list(heat.y) == [0, 1, 2]   # y increasing: layer 0 at bottom
    assert fig.layout.yaxis.range[0] < fig.layout.yaxis.range[1]
    # top-3: (0, 2)=0.9, (2, 0)=0.8, (2, 2)=0.7 -> x = head, y = layer
    assert list(zip(top.y, top.x)) == [(0, 2), (2, 0), (2, 2)]
    assert top.name == "top-3"
    assert heat.text[2][0] == "layer 2, head 0<br>score 0.8<br>rank 1"
    assert "%{text}" in heat.hovertemplate
    assert "aie" in fig.layout.title.text


def test_head_map_title_and_no_markers():
    fig = plots.head_map(scores(GRID_A), k=0, title="mine")
    assert len(fig.data) == 1 and fig.layout.title.text == "mine"
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        plots.head_map(scores(GRID_A), k=10)


def test_head_map_compare_marks_shared_and_unique():
    a, b = scores(GRID_A), scores(GRID_B, method="attnlrp")
    fig = plots.head_map_compare(a, b, k=3)
    # top-3 a: (0,2) (2,0) (2,2); top-3 b: (1,0) (1,1) (2,0)
    heat_a, heat_b, *marks = fig.data
    assert heat_a.type == heat_b.type == "heatmap"
    assert heat_a.xaxis == "x" and heat_b.xaxis == "x2"
    assert len(marks) == 6     # three marker sets on each of the two panels
    by_name = {}
    for m in marks:
        by_name.setdefault(m.name, []).append(m)
    assert set(by_name) == {"shared (1)", "only aie (2)", "only attnlrp (2)"}
    shared = by_name["shared (1)"][0]
    assert list(zip(shared.y, shared.x)) == [(2, 0)]
    assert set(zip(by_name["only aie (2)"][0].y, by_name["only aie (2)"][0].x)) == {(0, 2), (2, 2)}
    assert set(zip(by_name["only attnlrp (2)"][0].y, by_name["only attnlrp (2)"][0].x)) == {(1, 0), (1, 1)}
    symbols = {m.name: m.marker.symbol for m in marks}
    assert len(set(symbols.values())) == 3
    assert sum(bool(m.showlegend) for m in marks) == 3    # one legend entry per set
    assert "1 shared" in fig.layout.title.text


def test_head_map_compare_same_method_labels_by_prompt_mode():
    fig = plots.head_map_compare(scores(GRID_A), scores(GRID_B, prompt_mode="instruction"), k=2)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["aie (icl)", "aie (instruction)"]


def test_head_map_compare_identical_has_only_shared():
    fig = plots.head_map_compare(scores(GRID_A), scores(GRID_A), k=4)
    assert [m.name for m in fig.data[2:]] == ["shared (4)", "shared (4)"]


# -- results figures -----------------------------------------------------------------------

def test_task_bars_series():
    fig = plots.task_bars(results())
    assert all(t.type == "bar" for t in fig.data)
    names = [t.name for t in fig.data]
    assert names == ["zero-shot", "ICL", "instruction", "aie fv", "aie dfv", "attnlrp fv",
                     "attnlrp dfv"]
    bars = {t.name: dict(zip(t.x, t.y)) for t in fig.data}
    assert bars["ICL"] == {"capitalize": 0.9, "antonym": 0.7}
    assert bars["instruction"] == {"capitalize": 0.2}        # absent for antonym: skipped
    assert bars["attnlrp fv"] == {"capitalize": 0.35}
    assert bars["aie dfv"] == pytest.approx({"capitalize": 0.3, "antonym": 0.5})
    assert fig.layout.barmode == "group"


def test_task_bars_baselines_only():
    r = results()
    for rec in r["tasks"].values():
        rec.pop("steered")
        rec.pop("instruction_top1", None)
    assert [t.name for t in plots.task_bars(r).data] == ["zero-shot", "ICL"]


def test_task_bars_nothing_plottable():
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.task_bars({"tasks": {"a": {"n": 3}}})
    with pytest.raises(ValueError, match="results.json"):
        plots.task_bars({"model": "x"})


def test_layer_sweep_tasks_and_thick_mean():
    fig = plots.layer_sweep(results())
    assert len(fig.data) == 3       # two tasks + the mean (only "fv" has a layer sweep)
    cap, ant, mean = fig.data
    assert list(cap.x) == [0, 1, 2] and list(cap.y) == pytest.approx([0.1, 0.3, 0.5])
    assert list(ant.y) == pytest.approx([0.3, 0.5, 0.7])
    assert list(mean.y) == pytest.approx([0.2, 0.4, 0.6])
    assert mean.line.width > cap.line.width
    assert mean.name.startswith("mean fv")


def test_layer_sweep_other_method_and_missing():
    fig = plots.layer_sweep(results(), method="attnlrp")
    assert len(fig.data) == 2       # one task + mean
    with pytest.raises(ValueError, match=r"methods in these results: \['aie', 'attnlrp'\]"):
        plots.layer_sweep(results(), method="gradient")


def test_scale_sweep():
    fig = plots.scale_sweep(results())
    assert [t.name for t in fig.data] == ["capitalize (dfv)", "antonym (dfv)", "mean dfv (2 tasks)"]
    assert list(fig.data[2].x) == [0.5, 1.0, 2.0]
    assert list(fig.data[2].y) == pytest.approx([0.1, 0.4, 0.2])


def test_k_sweep_and_missing():
    fig = plots.k_sweep(results())
    assert len(fig.data) == 3
    assert list(fig.data[0].x) == [10, 20, 40]
    assert list(fig.data[-1].y) == pytest.approx([0.4, 0.5, 0.6])
    r = results()
    for rec in r["tasks"].values():
        rec.pop("k_sweep")
    with pytest.raises(ValueError, match="k_sweep"):
        plots.k_sweep(r)


def test_sweep_mean_with_uneven_tasks():
    r = copy.deepcopy(results())
    del r["tasks"]["antonym"]["steered"]["aie"]["fv"]["layer_sweep"]["2"]
    mean = plots.layer_sweep(r).data[-1]
    assert list(mean.y) == pytest.approx([0.2, 0.4, 0.5])   # layer 2: capitalize only


def test_timing_log_axis():
    fig = plots.timing(results())
    (bar,) = fig.data
    assert bar.type == "bar" and fig.layout.yaxis.type == "log"
    assert list(bar.x) == ["aie", "attnlrp", "forward"]
    assert list(bar.y) == pytest.approx([125.0, 1000.0, 6000.0])   # attnlrp from samples/seconds
    # the log range starts a decade below the smallest rate's decade (10 for 125) and clears
    # the largest rate
    low, high = fig.layout.yaxis.range
    assert low == 1 and high > math.log10(6000.0)
    with pytest.raises(ValueError, match="timing"):
        plots.timing({"tasks": {}})


# -- token relevance -----------------------------------------------------------------------

def test_token_relevance_from_tensor():
    tokens = ["<s>", "hot", " ->", " cold", "\n", "hot"]
    rel = torch.tensor([0.0, 2.0, -1.0, 0.5, 0.1, -0.25])
    fig = plots.token_relevance(tokens, rel)
    (bar,) = fig.data
    assert bar.type == "bar"
    assert list(bar.x) == list(range(6))        # positions: repeated tokens stay separate bars
    assert list(bar.y) == pytest.approx(rel.tolist())
    assert list(fig.layout.xaxis.ticktext) == ["<s>", "hot", "␣->", "␣cold", "\\n", "hot"]
    assert bar.marker.cmin == -2.0 and bar.marker.cmax == 2.0
    top_color = bar.marker.colorscale[-1][1]       # positive end is red, negative end blue
    r, _, b = (int(c) for c in top_color[4:-1].split(","))
    assert r > b
    r, _, b = (int(c) for c in bar.marker.colorscale[0][1][4:-1].split(","))
    assert b > r


def test_token_relevance_from_list_and_errors():
    fig = plots.token_relevance(["a", "b"], [1.0, -1.0])
    assert list(fig.data[0].y) == [1.0, -1.0]
    with pytest.raises(ValueError, match="2 tokens but 3"):
        plots.token_relevance(["a", "b"], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="NaN"):
        plots.token_relevance(["a"], [float("nan")])


# -- saving --------------------------------------------------------------------------------

def test_save_html_self_contained(tmp_path):
    path = plots.save(plots.timing(results()), tmp_path / "figs" / "timing.html")
    text = path.read_text()
    assert "<html>" in text and len(text) > 1_000_000     # plotly.js inlined
    assert '<script src="http' not in text and "<script src='http" not in text


def test_save_png_without_kaleido(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaleido", None)      # makes `import kaleido` fail
    with pytest.raises(RuntimeError, match=r"pip install 'fvlens\[png\]'"):
        plots.save(plots.timing(results()), tmp_path / "t.png")


def test_save_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=".html or .png"):
        plots.save(plots.timing(results()), tmp_path / "t.pdf")
