"""Subcommands ``fvlens strategies``, ``fvlens transfer`` and ``fvlens frames``.

``add_parsers(subparsers)`` registers them on the ``fvlens`` parser (``fvlens.cli`` calls it);
``python -m fvlens.cli.analyses …`` runs them without it. Each handler calls the library, prints
a table and writes ``DIR/results.json`` (with versions and machine) plus HTML figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fvlens.cli.common import add_model_args, csv, load_from_args
from fvlens.provenance import write_results
from fvlens.tables import format_table

__all__ = ["add_parsers", "cmd_strategies", "cmd_transfer", "cmd_frames", "main"]


def _provenance(model, model_name: str, settings: dict) -> dict:
    from fvlens.provenance import machine, versions

    return {"model": model_name, "n_layers": model.cfg.n_layers, "settings": settings,
            "processing": getattr(model, "fvlens_meta", {}).get("processing"),
            "versions": versions(), "machine": machine()}


def _save_figures(out: Path, figures: dict) -> None:
    from fvlens.plots import save

    for name, fig in figures.items():
        save(fig, out / f"{name}.html")


# --- strategies --------------------------------------------------------------------------


def cmd_strategies(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from fvlens.analyses.depth import depth_summary
    from fvlens.analyses.figures import cosine_heatmap, layer_curves, scale_curves, strategy_bars
    from fvlens.analyses.strategies import StrategyConfig, run_strategies
    from fvlens.tasks import load_task

    cfg = StrategyConfig(strategies=tuple(csv(args.strategies)), k=args.k, shots=args.shots,
                         n_mean=args.n_mean, n_samples=args.samples, n_val=args.n_val,
                         n_test=args.n_test, scales=tuple(float(s) for s in csv(args.scales)),
                         common_layer=args.common_layer if args.common_layer == "fv"
                         else int(args.common_layer), seed=args.seed)
    tasks = [load_task(t) for t in csv(args.tasks)]  # fail before the model loads
    model = load_from_args(args)
    results = _provenance(model, args.model, dataclasses.asdict(cfg)) | {"tasks": {}}
    out = Path(args.out)
    tensors, heads = {}, {}
    t0 = time.perf_counter()
    for task in tasks:
        rec, vectors = run_strategies(model, task, cfg, progress=args.progress)
        results["tasks"][task.name] = rec
        for name, tv in vectors.items():
            tensors[f"{task.name}/{name}"] = tv.vectors.contiguous()
            heads[f"{task.name}/{name}"] = [list(h) for h in tv.heads]
        write_results(out, results)  # keep partial results
    results["seconds"] = time.perf_counter() - t0
    results["depth"] = depth_summary(results)
    rows = []
    for name, rec in results["tasks"].items():
        for s, r in rec.get("strategies", {}).items():
            rows.append({"task": name, "strategy": s, "zero-shot": rec.get("zero_shot_top1"),
                         "icl": rec["icl_top1"], "best layer": r["best_layer"],
                         "val top1": r["val_top1"], "test top1": r["test_top1"],
                         "n": rec["n"],
                         "tuned (layer, scale)": f"{r['tuned']['layer']}, "
                                                 f"{r['tuned']['scale']:g}",
                         "tuned test top1": r["tuned"]["test_top1"]})
    print(format_table(rows, ["task", "strategy", "n", "zero-shot", "icl", "best layer", "val top1",
                        "test top1", "tuned (layer, scale)", "tuned test top1"]))
    for name, rec in results["tasks"].items():
        if "cosine" in rec:
            c = rec["cosine"]
            print(f"\n{name}: cosine at layer {next(iter(c['layers'].values()))}")
            print(format_table([{"": a} | {b: c["matrix"][i][j] for j, b in enumerate(c["names"])}
                          for i, a in enumerate(c["names"])], [""] + c["names"]))
        if "gradient_vs_aie" in rec:
            print(f"gradient vs AIE head scores: {rec['gradient_vs_aie']}")
    save_file(tensors, str(out / "vectors.safetensors"),
              metadata={"heads": json.dumps(heads), "model": args.model})
    figures = {"strategies_bars": strategy_bars(results), "layer_curves": layer_curves(results),
               "scale_curves": scale_curves(results)}
    for name, rec in results["tasks"].items():
        if "cosine" in rec:
            figures[f"cosine_{name}"] = cosine_heatmap(rec, title=f"{name}: cosine similarity")
            figures[f"layers_{name}"] = layer_curves(results, task=name)
    _save_figures(out, figures)
    print(f"wrote {write_results(out, results)}")
    return 0


def _add_strategies(sub) -> None:
    from fvlens.analyses.names import DEFAULT_STRATEGIES, STRATEGIES

    s = sub.add_parser("strategies", help="compare task-vector extraction strategies "
                       "(head FV, mean difference, PCA, gradient heads) per layer")
    add_model_args(s)
    s.add_argument("--tasks", default="capitalize,present-past")
    s.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                   help=f"comma list from {','.join(STRATEGIES)}")
    s.add_argument("--k", type=int, default=20, help="heads per head FV")
    s.add_argument("--shots", type=int, default=10)
    s.add_argument("--n-mean", type=int, default=20,
                   help="clean prompts for mean activations and the paired contrast")
    s.add_argument("--samples", type=int, default=12, help="AIE/AttnLRP scoring prompts")
    s.add_argument("--n-val", type=int, default=20)
    s.add_argument("--n-test", type=int, default=25)
    s.add_argument("--scales", default="0.5,1,2,4")
    s.add_argument("--common-layer", default="fv",
                   help="layer of the cosine matrix: 'fv' (head FV's best layer) or an int")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--progress", action="store_true")
    s.add_argument("--out", default="runs/strategies")
    s.set_defaults(func=cmd_strategies)


# --- transfer ----------------------------------------------------------------------------


def _load_vectors(folder: Path, strategy: str, tasks: Sequence[str]) -> dict:
    """Vectors of ``strategy`` saved by ``fvlens strategies --out folder``, at their best layer."""
    from safetensors.torch import load_file

    from fvlens.steering import FunctionVector

    res_path, vec_path = folder / "results.json", folder / "vectors.safetensors"
    if not res_path.is_file() or not vec_path.is_file():
        raise FileNotFoundError(f"{folder} lacks results.json/vectors.safetensors; run "
                                f"`fvlens strategies --tasks … --out {folder}` first")
    results, tensors = json.loads(res_path.read_text()), load_file(str(vec_path))
    out = {}
    for t in tasks:
        key = f"{t}/{strategy}"
        rec = results.get("tasks", {}).get(t, {}).get("strategies", {}).get(strategy)
        if key not in tensors or rec is None:
            have = sorted({k.split("/")[0] for k in tensors if k.endswith("/" + strategy)})
            raise ValueError(f"{folder} has no {strategy} vector for {t!r} (it has {have}); "
                             f"run `fvlens strategies --tasks {t}` or drop --vectors")
        layer = rec["best_layer"]
        out[t] = FunctionVector(vector=tensors[key][layer].clone(), layer=layer)
    return out


def cmd_transfer(args: argparse.Namespace) -> int:
    from fvlens.analyses.strategies import extract_vector
    from fvlens.analyses.transfer import transfer_heatmaps, transfer_matrix
    from fvlens.tasks import load_task

    tasks = {t: load_task(t) for t in csv(args.tasks)}
    if len(tasks) < 2:
        raise ValueError("transfer needs at least two tasks: --tasks a,b[,…]")
    vectors, sweeps = {}, {}
    if args.vectors:
        vectors = _load_vectors(Path(args.vectors), args.strategy, list(tasks))
    model = load_from_args(args)
    t0 = time.perf_counter()
    if not args.vectors:
        for name, task in tasks.items():
            tv, layer, sweep = extract_vector(model, task, args.strategy, n_pairs=args.n_pairs,
                                              n_val=args.n_val, shots=args.shots, k=args.k,
                                              seed=args.seed)
            vectors[name] = tv.at(layer)
            sweeps[name] = {"layer": layer, "val_top1": sweep[layer]}
            print(f"{name}: {args.strategy} at layer {layer}, validation top-1 "
                  f"{sweep[layer]:.3f}")
    res = transfer_matrix(model, vectors, tasks, n_test=args.n_test, seed=args.seed,
                          scale=args.scale)
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    results = _provenance(model, args.model, settings) | {
        "transfer": res.to_json(), "vectors": sweeps, "seconds": time.perf_counter() - t0}
    rows = []
    for i, a in enumerate(res.sources):
        rows.append({"A \\ B": a} | {b: f"{res.top1[i][j]:.2f}/" + (
            "–" if res.a_kind[i][j] is None else f"{res.a_kind[i][j]:.2f}")
            for j, b in enumerate(res.targets)})
    print("top-1 on B / A-kind rate")
    print(format_table(rows, ["A \\ B", *res.targets]))
    out = Path(args.out)
    _save_figures(out, {"transfer": transfer_heatmaps(res)})
    print(f"wrote {write_results(out, results)}")
    return 0


def _add_transfer(sub) -> None:
    from fvlens.analyses.names import CHEAP_STRATEGIES, STRATEGIES

    s = sub.add_parser("transfer", help="cross-task transfer matrix: task A's vector in "
                       "zero-shot prompts of task B")
    add_model_args(s)
    s.add_argument("--tasks", default="capitalize,present-past,singular-plural,"
                   "choose_first_of_3,lowercase_first_letter,capitalize_first_letter,antonym")
    s.add_argument("--strategy", default="fv_gradient",
                   help=f"vector to transfer: {','.join(CHEAP_STRATEGIES)} (built here), or "
                   f"any of {','.join(STRATEGIES)} with --vectors")
    s.add_argument("--vectors", default=None,
                   help="an `fvlens strategies --out` folder to take the vectors from")
    s.add_argument("--n-pairs", type=int, default=16, help="paired prompts per vector")
    s.add_argument("--n-val", type=int, default=15, help="validation queries (layer choice)")
    s.add_argument("--n-test", type=int, default=20, help="zero-shot queries per task B")
    s.add_argument("--shots", type=int, default=10)
    s.add_argument("--k", type=int, default=20, help="heads of fv_gradient")
    s.add_argument("--scale", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/transfer")
    s.set_defaults(func=cmd_transfer)


# --- frames ------------------------------------------------------------------------------


def cmd_frames(args: argparse.Namespace) -> int:
    from fvlens.analyses.frames import (FrameConfig, compare_frames, frame_figure,
                                        following_survey)
    from fvlens.tasks import load_task

    cfg = FrameConfig(criterion=args.criterion, mode=args.mode, max_size=args.max_size,
                      n_candidates=args.candidates, n_queries=args.n_queries, k=args.k,
                      n_val=args.n_val, n_test=args.n_test, seed=args.seed)
    specs = [(t.split(":")[0], t.split(":")[1] if ":" in t else args.instruction)
             for t in csv(args.task)]
    tasks = [load_task(name) for name, _ in specs]
    for task in tasks:
        if not task.instructions:
            raise ValueError(f"task {task.name!r} has no instructions to search frames in")
    survey_tasks = [load_task(t) for t in csv(args.survey)] if args.survey else []
    model = load_from_args(args)
    t0 = time.perf_counter()
    results = _provenance(model, args.model, dataclasses.asdict(cfg)) | {"frames": {}}
    out = Path(args.out)
    figures = {}
    if survey_tasks:
        survey = following_survey(model, survey_tasks, seed=args.seed)
        results["survey"] = survey
        print(format_table([{"task": t, "instruction": r["instruction"][:48], "top1": r["top1"],
                       "top5": r["top5"]} for t, rows in survey.items() for r in rows],
                     ["task", "instruction", "top1", "top5"]))
    rows = []
    for task, (_, spec) in zip(tasks, specs):
        which = range(len(task.instructions)) if spec == "all" else [int(spec)]
        for i in which:
            key = f"{task.name}/{i}"
            try:
                rec = compare_frames(model, task, i, cfg, heads=not args.no_heads)
            except ValueError as err:
                if "no correctly answered samples" not in str(err):
                    raise
                results["frames"][key] = {"skipped": str(err)}
                print(f"{key}: skipped: {err}")
                continue
            results["frames"][key] = rec
            s = rec["search"]
            figures[f"frame_{task.name}_{i}"] = frame_figure(s)
            rows.append({"instruction": key, "samples": rec["n_samples"],
                         "automatic": "|".join(s["frame_tokens"]),
                         "annotated": "|".join(s["annotated_tokens"]),
                         "jaccard": s["overlap"]["jaccard"],
                         "acc auto removed": s["path"][len(s["frame"])]["accuracy"],
                         "acc annot removed": rec.get("annotated_removed_accuracy", ""),
                         "fv auto": rec.get("heads_automatic", {}).get("test_top1", ""),
                         "fv annot": rec.get("heads_annotated", {}).get("test_top1", "")})
            write_results(out, results)
    results["seconds"] = time.perf_counter() - t0
    if rows:
        print(format_table(rows, list(rows[0])))
    elif not survey_tasks:
        print("no instruction had samples; see the skipped reasons above")
    _save_figures(out, figures)
    print(f"wrote {write_results(out, results)}")
    return 0


def _add_frames(sub) -> None:
    s = sub.add_parser("frames", help="automatic intensional frames: the instruction tokens "
                       "whose removal breaks the task (AttnLRP-ranked greedy search)")
    add_model_args(s)
    s.add_argument("--task", default="capitalize",
                   help="task name(s), comma-separated; name:i searches instruction i only")
    s.add_argument("--instruction", default="all",
                   help="instruction index or 'all' (for tasks given without :i)")
    s.add_argument("--criterion", default="top1", choices=["top1", "top3", "top5"],
                   help="a sample counts when its target is within this rank (top5 for "
                   "models that rarely follow instructions)")
    s.add_argument("--mode", default="remove", choices=["remove", "replace"])
    s.add_argument("--max-size", type=int, default=4, help="largest frame (greedy steps)")
    s.add_argument("--candidates", type=int, default=6,
                   help="most relevant tokens tried per step")
    s.add_argument("--n-queries", type=int, default=40)
    s.add_argument("--k", type=int, default=10, help="heads per FV in the head comparison")
    s.add_argument("--n-val", type=int, default=15)
    s.add_argument("--n-test", type=int, default=20)
    s.add_argument("--no-heads", action="store_true", help="skip the head/FV comparison")
    s.add_argument("--survey", default="", help="tasks whose instruction-following "
                   "accuracy to list first (comma-separated)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/frames")
    s.set_defaults(func=cmd_frames)


# --- registration ------------------------------------------------------------------------


def add_parsers(subparsers) -> None:
    """Register ``strategies``, ``transfer`` and ``frames`` on ``fvlens``'s subparsers."""
    _add_strategies(subparsers)
    _add_transfer(subparsers)
    _add_frames(subparsers)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fvlens", description=__doc__.splitlines()[0])
    add_parsers(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"fvlens: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
