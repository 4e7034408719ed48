"""Summarise `fvlens run` results for docs/results.md: tables, paired bootstrap CIs, head maps.

    python benchmarks/instruction.py benchmarks/results/run_qwen_instruction.json \
        --out benchmarks/results/instruction_summary.json --figures docs/img --name qwen_ins

Reads a results.json (with the per-query target ranks every `fvlens run` records) and writes:
per task the four combinations (AIE/AttnLRP × FV/DFV) with zero-shot and the reference prompt;
their averages over the unflagged tasks; paired bootstrap 95% intervals of the differences
DFV − FV (per selection) and AttnLRP − AIE (per injection) over test queries, per task and
for the average over tasks (queries resampled within each task, 10,000 draws, seeded); the
rank of the target in the failures; with ``--figures``, PNG snapshots of the head-location
maps of both selections (``fvlens.plots.head_map_compare``, headless Chromium as in
benchmarks/figures.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

COMBOS = (("aie", "fv"), ("aie", "dfv"), ("attnlrp", "fv"), ("attnlrp", "dfv"))
CONTRASTS = {"dfv-fv (aie)": ("aie/dfv", "aie/fv"), "dfv-fv (attnlrp)": ("attnlrp/dfv", "attnlrp/fv"),
             "attnlrp-aie (fv)": ("attnlrp/fv", "aie/fv"),
             "attnlrp-aie (dfv)": ("attnlrp/dfv", "aie/dfv"),
             "best-zero_shot": ("best", "zero_shot")}
N_BOOT = 10_000


def _correct(ranks) -> np.ndarray:
    return (np.asarray(ranks) == 0).astype(float)


def _tasks(results: dict) -> dict[str, dict]:
    return {n: t for n, t in results["tasks"].items() if not t.get("skipped") and t.get("per_query")}


def _best_combo(results: dict) -> str:
    """The combination with the best average test top-1 over the tasks (reported as "best")."""
    tasks = _tasks(results)
    means = {f"{m}/{i}": np.mean([_correct(t["per_query"][f"{m}/{i}"]).mean() for t in tasks.values()])
             for m, i in COMBOS if all(f"{m}/{i}" in t["per_query"] for t in tasks.values())}
    return max(means, key=means.get)


def bootstrap(results: dict, *, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """Paired bootstrap of each contrast per task and for the mean over tasks."""
    tasks = _tasks(results)
    best = _best_combo(results)
    rng = np.random.default_rng(seed)
    out: dict = {"best_combination": best, "n_boot": n_boot, "contrasts": {}}
    draws = {n: rng.integers(0, len(t["per_query"]["zero_shot"]),
                             size=(n_boot, len(t["per_query"]["zero_shot"])))
             for n, t in tasks.items()}
    for name, (a, b) in CONTRASTS.items():
        a = best if a == "best" else a
        per_task, boots = {}, []
        for n, t in tasks.items():
            pq = t["per_query"]
            if a not in pq or b not in pq:
                continue
            d = _correct(pq[a]) - _correct(pq[b])
            sample = d[draws[n]].mean(1)
            boots.append(sample)
            per_task[n] = {"diff": float(d.mean()), "ci95": [float(np.quantile(sample, 0.025)),
                                                            float(np.quantile(sample, 0.975))],
                           "n": int(len(d))}
        if not boots:
            continue
        avg = np.mean(boots, axis=0)
        out["contrasts"][name] = {
            "a": a, "b": b, "per_task": per_task,
            "mean_over_tasks": float(np.mean([v["diff"] for v in per_task.values()])),
            "mean_ci95": [float(np.quantile(avg, 0.025)), float(np.quantile(avg, 0.975))],
            "share_of_draws_above_0": float((avg > 0).mean())}
    return out


def table(results: dict) -> tuple[list[dict], dict]:
    """Per-task rows (zero-shot, reference, four combinations) and their averages."""
    mode = results["settings"].get("prompt_mode", "icl")
    rows = []
    for name, t in results["tasks"].items():
        if t.get("skipped"):
            rows.append({"task": name, "skipped": t["skipped"]})
            continue
        row = {"task": name, "n": t.get("n"), "zero_shot": t.get("zero_shot_top1"),
               "zero_shot_ci95": t.get("zero_shot_top1_ci95"),
               mode: t.get(f"{mode}_top1"), f"{mode}_ci95": t.get(f"{mode}_top1_ci95"),
               "flags": t.get("flags", [])}
        fmt = t.get("answer_format")
        if fmt:
            row["answer_format"] = fmt["chosen"]
            row["format_validation"] = fmt["validation_top1"]
        for m, i in COMBOS:
            s = t.get("steered", {}).get(m, {}).get(i)
            if s:
                row[f"{m}/{i}"] = s["top1"]
                row[f"{m}/{i}_ci95"] = s.get("top1_ci95")
                row[f"{m}/{i}@"] = s.get("layer") if i == "fv" else s.get("scale")
        ks = t.get("k_sweep") or {}
        for m in ks:
            for i, sweep in ks[m].items():
                for k, v in sweep.items():
                    row[f"{m}/{i} K={k}"] = v
        rows.append(row)
    kept = [r for r in rows if "skipped" not in r]
    avg = {}
    for key in ["zero_shot", mode] + [f"{m}/{i}" for m, i in COMBOS] + sorted(
            {k for r in kept for k in r if "K=" in k}):
        vals = [r[key] for r in kept if r.get(key) is not None]
        if vals:
            avg[key] = float(np.mean(vals))
    return rows, avg


def failures(results: dict) -> dict:
    """Per task and combination: how many test queries fail and the target's rank among them."""
    out = {}
    for name, t in _tasks(results).items():
        pq = t["per_query"]
        rec = {}
        for key in ["zero_shot"] + [f"{m}/{i}" for m, i in COMBOS]:
            if key not in pq:
                continue
            r = np.asarray(pq[key])
            bad = r[r > 0]
            rec[key] = {"n_fail": int(len(bad)), "n": int(len(r)),
                        "rank_1_to_4": int(((bad >= 1) & (bad <= 4)).sum()),
                        "rank_5_to_49": int(((bad >= 5) & (bad <= 49)).sum()),
                        "rank_50_plus": int((bad >= 50).sum()),
                        "median_rank": float(np.median(bad)) if len(bad) else None}
        out[name] = {"ranks": rec, "examples": t.get("failures", {})}
    return out


def compare_runs(a: dict, b: dict, *, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """Paired bootstrap of run ``a`` minus run ``b`` per combination (e.g. global vs per-task
    heads), on the test queries both kept (same tasks, seed and reference prompts)."""
    ta, tb = _tasks(a), _tasks(b)
    rng = np.random.default_rng(seed)
    out: dict = {"n_boot": n_boot, "combinations": {}}
    for m, i in COMBOS:
        key, per_task, boots = f"{m}/{i}", {}, []
        for n in sorted(ta.keys() & tb.keys()):
            pa, pb = ta[n]["per_query"], tb[n]["per_query"]
            if key not in pa or key not in pb:
                continue
            if pa["zero_shot"] != pb["zero_shot"]:
                raise ValueError(f"{n}: the runs kept different test queries; compare runs "
                                 "with the same tasks, seed and prompts")
            d = _correct(pa[key]) - _correct(pb[key])
            sample = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
            boots.append(sample)
            per_task[n] = {"diff": float(d.mean()), "n": int(len(d)),
                           "ci95": [float(np.quantile(sample, 0.025)),
                                    float(np.quantile(sample, 0.975))]}
        if boots:
            avg = np.mean(boots, axis=0)
            out["combinations"][key] = {
                "per_task": per_task,
                "mean_over_tasks": float(np.mean([v["diff"] for v in per_task.values()])),
                "mean_ci95": [float(np.quantile(avg, 0.025)), float(np.quantile(avg, 0.975))]}
    return out


def _wilson(p: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson interval of a proportion p of n (fvlens.results.wilson_interval)."""
    k = round(p * n) / n
    denom = 1 + z * z / n
    centre = (k + z * z / (2 * n)) / denom
    half = z * np.sqrt(k * (1 - k) / n + z * z / (4 * n * n)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def acceptance(baseline: dict, tasks=("capitalize", "antonym", "singular-plural"),
               threshold: float = 0.3, need: int = 2) -> dict:
    """Issue 13's baseline acceptance: instruction top-1 >= threshold on >= need of tasks."""
    per = {}
    for name in tasks:
        t = baseline.get("tasks", {}).get(name)
        if t is None or t.get("skipped"):
            continue
        per[name] = {k: t.get(k) for k in ("n", "zero_shot_top1", "zero_shot_top1_ci95",
                                           "icl_top1", "icl_top1_ci95", "instruction_top1",
                                           "instruction_top1_ci95") if k in t}
        for mode in ("zero_shot", "icl", "instruction"):
            if f"{mode}_top1" in per[name] and f"{mode}_top1_ci95" not in per[name]:
                per[name][f"{mode}_top1_ci95"] = list(_wilson(per[name][f"{mode}_top1"],
                                                             per[name]["n"]))
    met = [n for n, r in per.items() if (r.get("instruction_top1") or 0) >= threshold]
    return {"threshold": threshold, "need": need, "tasks": per, "met_on": met,
            "holds": len(met) >= need}


def head_maps(results: dict, out_dir: Path, name: str) -> list[str]:
    """PNG snapshots of the AIE vs AttnLRP head-location maps (global heads: one map)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from figures import snapshot

    from fvlens import plots
    from fvlens.heads.scores import HeadScores

    k = results["settings"].get("k", 20)
    written, seen = [], set()
    for task, t in _tasks(results).items():
        hs = t.get("head_scores") or {}
        if "aie" not in hs or "attnlrp" not in hs:
            continue
        key = json.dumps(t.get("heads"), sort_keys=True)
        if key in seen:  # global heads: every task has the same map
            continue
        seen.add(key)
        aie, lrp = HeadScores.from_json(hs["aie"]), HeadScores.from_json(hs["attnlrp"])
        label = "global" if results.get("global_tasks") else task
        path = out_dir / f"head_map_{name}_{label}.png"
        snapshot(plots.head_map_compare(aie, lrp, k=k), path, height=150 + 22 * aie.n_layers)
        written.append(str(path))
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a results.json of fvlens run")
    ap.add_argument("--out", required=True, help="summary JSON to write")
    ap.add_argument("--figures", default=None, help="folder for the head-map PNGs")
    ap.add_argument("--name", default="run", help="figure name stem")
    ap.add_argument("--baseline", default=None,
                    help="a results.json of fvlens baseline (issue 13's acceptance check)")
    ap.add_argument("--compare", default=None,
                    help="another run's results.json: paired bootstrap of this run minus it")
    args = ap.parse_args()
    results = json.loads(Path(args.results).read_text())
    rows, avg = table(results)
    summary = {"source": args.results, "model": results["model"],
               "settings": results["settings"], "seconds": results.get("seconds"),
               "global_tasks": results.get("global_tasks"), "rows": rows, "averages": avg,
               "bootstrap": bootstrap(results), "failures": failures(results)}
    if args.baseline:
        base = json.loads(Path(args.baseline).read_text())
        summary["baseline"] = {"source": args.baseline, "settings": base.get("settings"),
                               "seconds": base.get("seconds"), **acceptance(base)}
    if args.compare:
        other = json.loads(Path(args.compare).read_text())
        summary["compare"] = {"minus": args.compare,
                              "minus_settings": other["settings"],
                              **compare_runs(results, other)}
    if args.figures:
        out = Path(args.figures)
        out.mkdir(parents=True, exist_ok=True)
        summary["figures"] = head_maps(results, out, args.name)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(json.dumps({"averages": avg, "bootstrap": {
        k: {"mean": v["mean_over_tasks"], "ci95": v["mean_ci95"]}
        for k, v in summary["bootstrap"]["contrasts"].items()}}, indent=1))


if __name__ == "__main__":
    main()
