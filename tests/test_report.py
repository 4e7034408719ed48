"""The HTML report: sections, numbers and escaping from a synthetic results.json (no model),
and, when a Chromium is installed, that the page actually renders its figures headless."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch
from plotly.offline import get_plotlyjs

from fvlens.heads import HeadScores
from fvlens.report import build_report, write_report

EVIL = "<script>alert('x')</script>"
BROWSER_TIMEOUT_S = 120   # a cold headless Chromium parsing ~5 MB of plotly.js on 2 shared cores
# Figures of RESULTS: task bars, timing, (layer, K, scale) sweeps × 2 methods,
# head maps 2 tasks × 2 methods, one AIE-vs-AttnLRP comparison per task.
N_FIGURES = 1 + 1 + 3 * 2 + 2 * 2 + 2


def head_scores(method: str, task: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return HeadScores(scores=torch.rand(3, 4, generator=g), method=method, tasks=(task,),
                      prompt_mode="icl", n_samples=8).to_json()


def steered(top1: float, layer: int) -> dict:
    return {"fv": {"top1": top1, "top3": top1 + 0.1, "layer": layer,
                   "layer_sweep": {"0": 0.0, "1": top1, "2": top1 / 2}},
            "dfv": {"top1": top1 - 0.1, "top3": top1, "scale": 2.0,
                    "scale_sweep": {"1.0": top1 - 0.1, "2.0": top1 - 0.2}}}


def make_results() -> dict:
    tasks = {}
    for i, (task, icl) in enumerate((("capitalize", 0.95), ("antonym", 0.6))):
        tasks[task] = {
            "n": 40 - 10 * i, "zero_shot_top1": 0.0 + 0.05 * i, "icl_top1": icl,
            "instruction_top1": 0.1,
            "steered": {"aie": steered(0.4 + 0.1 * i, 2), "attnlrp": steered(0.35, 1)},
            "k_sweep": {"aie": {"fv": {"1": 0.2, "2": 0.4}}, "attnlrp": {"fv": {"1": 0.1, "2": 0.3}}},
            "heads": {"aie": [[2, 1], [1, 3]], "attnlrp": [[2, 1], [0, 0]]},
            "head_overlap": {"shared": [[2, 1]], "only_self": [[1, 3]], "only_other": [[0, 0]],
                             "jaccard": 1 / 3},
            "head_scores": {"aie": head_scores("aie", task, 2 * i),
                            "attnlrp": head_scores("attnlrp", task, 2 * i + 1)},
            "failures": {"aie": {"fv": [{"input": EVIL, "target": "Cat", "prediction": " cat",
                                         "rank": 3}],
                                 "dfv": [{"input": "dog", "target": "Dog", "prediction": " d",
                                          "rank": 7}]}},
        }
    return {"model": "tiny & <test>", "settings": {"k": 2, "shots": 10, "select": ["aie", "attnlrp"],
                                                   "inject": ["fv", "dfv"]},
            "versions": {"fvlens": "0.1.0", "torch": "2.5"}, "machine": {"cpu_count": 2},
            "tasks": tasks,
            "timing": {"aie": {"samples": 25, "seconds": 12.0, "samples_per_min": 125.0},
                       "attnlrp": {"samples": 25, "seconds": 30.0}}}


class Tables(HTMLParser):
    """Cells' text of every <table>, keyed by its class."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._rows = self.tables.setdefault(dict(attrs).get("class", ""), [])
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._rows = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables(page: str) -> dict[str, list[list[str]]]:
    parser = Tables()
    parser.feed(page)
    return parser.tables


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    (run_dir / "results.json").write_text(json.dumps(make_results()))
    return write_report(run_dir)


@pytest.fixture(scope="module")
def page(report_path):
    return report_path.read_text(encoding="utf-8")


def test_writes_report_next_to_results(report_path):
    assert report_path.name == "report.html" and report_path.is_file()
    assert (report_path.parent / "results.json").is_file()


def test_plotlyjs_inlined_once_and_no_cdn(page):
    assert page.count(get_plotlyjs()[:60]) == 1
    rest = page.replace(get_plotlyjs(), "")               # plotly.js itself names its CDN
    assert "cdn.plot.ly" not in rest and "<script src=" not in rest


def test_one_div_per_figure(page):
    assert page.count('class="plotly-graph-div"') == N_FIGURES
    assert [int(i) for i in re.findall(r'id="fig-(\d+)"', page)] == list(range(1, N_FIGURES + 1))
    assert 'class="note"' not in page          # nothing was skipped for an error


def test_summary_table_has_a_row_per_task_with_its_numbers(page):
    header, *rows = tables(page)["summary"]
    assert header == ["task", "n", "zero-shot", "ICL", "instruction",
                      "aie fv", "aie dfv", "attnlrp fv", "attnlrp dfv"]
    assert [r[0] for r in rows] == ["capitalize", "antonym"]
    cap, ant = rows
    assert cap[1:5] == ["40", "0.000", "0.950", "0.100"]
    assert ant[1:5] == ["30", "0.050", "0.600", "0.100"]
    assert cap[5] == "0.400 L2" and ant[5] == "0.500 L2"      # top-1 with the FV layer
    assert cap[6] == "0.300 ×2" and cap[7] == "0.350 L1"


def test_settings_versions_and_heads(page):
    t = tables(page)
    assert "&lt;test&gt;" in page and "<test>" not in page    # the model name is escaped
    cells = [c for rows in t.values() for row in rows for c in row]
    assert "shots" in cells and "torch" in cells and "cpu_count" in cells
    heads = t["heads"]
    assert ["capitalize", "aie", "2", "L2H1, L1H3"] in heads
    assert ["capitalize", "overlap", "1", "Jaccard 0.333; shared: L2H1"] in heads


def test_failures_are_listed_and_escaped(page):
    rows = tables(page)["failures"]
    data = [r for r in rows if r[0] != "input"]
    assert [EVIL, "Cat", " cat", "3"] in data and ["dog", "Dog", " d", "7"] in data
    assert len(data) == 4                                     # 2 tasks × (aie fv, aie dfv)
    assert EVIL not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<h4>aie fv (1 failure)</h4>" in page
    for anchor in ("settings", "accuracy", "figures", "heads", "failures"):
        assert f'<h2 id="{anchor}">' in page and f'<a href="#{anchor}">' in page


def test_absent_sections_are_skipped():
    results = {"model": "m", "tasks": {"t": {"n": 5, "icl_top1": 0.5}}}
    page = build_report(results)
    assert page.count('class="plotly-graph-div"') == 1         # task bars only
    assert tables(page)["summary"] == [["task", "n", "ICL"], ["t", "5", "0.500"]]
    for absent in ('id="failures"', 'id="heads"', "<h3>head scores", "<h3>settings",
                   "<h3>versions", "<h3>machine"):
        assert absent not in page
    assert "<h3>run</h3>" in page                               # the model name
    assert get_plotlyjs()[:60] in page


def test_empty_results_give_a_page_without_plotly():
    page = build_report({})
    assert "no results" in page and get_plotlyjs()[:60] not in page
    assert build_report({"model": "m"}, title="<b>mine</b>").count("&lt;b&gt;mine&lt;/b&gt;") == 2


def test_partial_and_broken_entries_do_not_stop_the_report():
    results = make_results()
    tasks = results["tasks"]
    del tasks["antonym"]["steered"]["attnlrp"]
    tasks["antonym"]["head_scores"] = {"aie": {"format": "something else"}}
    tasks["capitalize"]["steered"]["aie"]["fv"]["top1"] = None
    page = build_report(copy.deepcopy(results))
    rows = tables(page)["summary"]
    assert rows[2][7:] == ["–", "–"] and rows[1][5] == "–"
    assert "head_scores[aie] skipped: not a HeadScores JSON object" in page
    assert page.count('class="plotly-graph-div"') == N_FIGURES - 3    # antonym's maps gone


def test_skipped_tasks_and_global_head_scores():
    results = make_results()
    tasks = results["tasks"]
    tasks["antonym"]["head_scores"] = copy.deepcopy(tasks["capitalize"]["head_scores"])
    tasks["broken"] = {"skipped": "too few pairs <5>"}
    results["global_tasks"] = ["antonym", "capitalize"]
    page = build_report(results)
    rows = tables(page)["summary"]
    assert rows[0][-1] == "note" and rows[-1][0] == "broken"
    assert rows[-1][-1] == "skipped: too few pairs <5>" and rows[1][-1] == ""
    assert "The same head scores as capitalize" in page
    assert page.count('class="plotly-graph-div"') == N_FIGURES - 3    # antonym's maps once
    assert ["global_tasks", '["antonym", "capitalize"]'] in tables(page)["run"]


def test_missing_results_json_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no results\.json in .*fvlens run --out"):
        write_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nowhere")
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        write_report(tmp_path)


# -- headless browser ----------------------------------------------------------------------------

def find_chromium() -> str | None:
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(url: str, profile) -> tuple[str, list[str]]:
    """Load ``url`` in headless Chromium: the DOM after load, and its console errors."""
    exe = find_chromium()
    if exe is None:
        pytest.skip("no chromium installed (run .ci/chromium.sh to install Debian's)")
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--enable-logging=stderr",
         "--v=0", "--dump-dom", url],
        capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # console messages come out as `[...:INFO:CONSOLE:1] "Uncaught ReferenceError: ..."`
    errors = [line for line in proc.stderr.splitlines()
              if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    return proc.stdout, errors


def test_page_renders_in_headless_chromium(report_path, tmp_path):
    dom, errors = dump_dom(report_path.as_uri(), tmp_path / "profile")
    # plotly.js ran: every figure div got plotted and holds plotly's SVGs
    plotted = {int(i) for i in re.findall(r'id="fig-(\d+)" class="[^"]*js-plotly-plot', dom)}
    assert plotted == set(range(1, N_FIGURES + 1))
    assert dom.count('class="main-svg"') >= N_FIGURES
    assert "<script>alert(" not in dom
    assert not errors, errors


def test_console_error_check_catches_errors(tmp_path):
    """The check above is not vacuous: a page that throws is reported."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, errors = dump_dom(bad.as_uri(), tmp_path / "profile")
    assert any("Uncaught ReferenceError" in line for line in errors)
