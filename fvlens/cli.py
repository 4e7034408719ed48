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

from fvlens.provenance import write_results

__all__ = ["main"]


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def cmd_tasks(args: argparse.Namespace) -> int:
    from fvlens.tasks import list_tasks, load_task

    rows = []
    for name in list_tasks():
        t = load_task(name)
        rows.append({"task": name, "pairs": len(t), "instructions": len(t.instructions),
                     "description": t.description[:60]})
    print(_table(rows, ["task", "pairs", "instructions", "description"]))
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from fvlens.evaluate import baseline
    from fvlens.models import load_model
    from fvlens.provenance import machine, versions
    from fvlens.tasks import load_task

    from fvlens.tasks import list_tasks

    names = list_tasks() if args.tasks == "all" else _csv(args.tasks)
    tasks = [load_task(t) for t in names]
    model = load_model(args.model)
    results = {"model": args.model, "settings": {
        "shots": args.shots, "n_test": args.n_test, "seed": args.seed,
        "processing": model.fvlens_meta["processing"]},
        "versions": versions(), "machine": machine(), "tasks": {}}
    t0 = time.perf_counter()
    for task in tasks:
        results["tasks"][task.name] = baseline(model, task, shots=args.shots, n_test=args.n_test,
                                               seed=args.seed)
    results["seconds"] = time.perf_counter() - t0
    rows = [{"task": name} | r for name, r in results["tasks"].items()]
    print(_table(rows, ["task", "n", "zero_shot_top1", "icl_top1", "instruction_top1",
                        "icl_top3", "n_multi_token_targets"]))
    if args.out:
        print(f"wrote {write_results(Path(args.out), results)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fvlens.models import load_model
    from fvlens.pipeline import RunConfig, run

    cfg = RunConfig(
        tasks=tuple(_csv(args.tasks)), prompt_mode=args.prompt_mode,
        select=tuple(_csv(args.select)), inject=tuple(_csv(args.inject)), k=args.k,
        k_sweep=tuple(int(k) for k in _csv(args.k_sweep)), heads=args.heads, shots=args.shots,
        n_samples=args.samples, n_test=args.n_test, seed=args.seed, aie_impl=args.aie_impl,
        frame=args.frame)
    from fvlens.tasks import load_task

    for t in cfg.tasks:  # fail before the model loads
        load_task(t)
    model = load_model(args.model)
    results = run(model, cfg)
    results["model"] = args.model
    print(_summary_table(results))
    out = Path(args.out)
    print(f"wrote {write_results(out, results)}")
    try:
        from fvlens.report import write_report
    except ImportError:  # pragma: no cover - the report module ships with fvlens
        return 0
    print(f"wrote {write_report(out)}")
    return 0


def _summary_table(results: dict) -> str:
    rows = []
    for name, r in results["tasks"].items():
        row = {"task": name, "n": r.get("n", 0), "zero-shot": r.get("zero_shot_top1", ""),
               "icl": r.get("icl_top1", r.get("instruction_top1", ""))}
        for method, inj in r.get("steered", {}).items():
            for kind, res in inj.items():
                extra = f"@L{res['layer']}" if "layer" in res else f"x{res.get('scale', 1):g}"
                row[f"{method}/{kind}"] = f"{res['top1']:.3f} {extra}"
        if "skipped" in r:
            row["note"] = r["skipped"][:60]
        rows.append(row)
    columns = ["task", "n", "zero-shot", "icl"]
    for row in rows:
        columns += [c for c in row if c not in columns]
    timing = "  ".join(f"{m}: {t['samples_per_min']:.1f} samples/min"
                       for m, t in results.get("timing", {}).items() if t.get("samples_per_min"))
    return _table(rows, columns) + (f"\nhead selection: {timing}" if timing else "")


def cmd_steer(args: argparse.Namespace) -> int:
    from fvlens.generation import steer_report
    from fvlens.models import load_model
    from fvlens.tasks import load_task

    load_task(args.task)  # fail before the model loads
    model = load_model(args.model)
    prompt = args.prompt.encode().decode("unicode_escape") if args.escapes else args.prompt
    rep = steer_report(model, prompt, task=args.task, select=args.select, inject=args.inject,
                       k=args.k, max_new_tokens=args.max_new_tokens, seed=args.seed,
                       n_samples=args.samples)
    where = f"layer {rep['layer']}" if rep.get("layer") is not None else f"scale {rep.get('scale')}"
    print(f"task {args.task}: {args.select} heads (k={args.k}), {args.inject} at {where}")
    print(f"prompt:     {rep['prompt']!r}")
    print(f"unsteered:  {rep['unsteered']!r}")
    print(f"steered:    {rep['steered']!r}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "steer.json").write_text(json.dumps(rep, indent=1))
        print(f"wrote {out / 'steer.json'}")
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
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--tasks", default="capitalize,present-past,country-capital",
                   help="task names or paths, or 'all' for every built-in task")
    s.add_argument("--shots", type=int, default=10)
    s.add_argument("--n-test", type=int, default=50, help="test queries per task")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="directory for results.json")
    s.set_defaults(func=cmd_baseline)

    from fvlens.pipeline import DEFAULT_TASKS

    s = sub.add_parser("run", help="the main job: select heads, build FV/DFV, evaluate, report")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    s.add_argument("--prompt-mode", default="icl", choices=["icl", "instruction"])
    s.add_argument("--select", default="aie", help="aie, attnlrp or both: aie,attnlrp")
    s.add_argument("--inject", default="fv,dfv")
    s.add_argument("--k", type=int, default=20, help="heads per vector")
    s.add_argument("--k-sweep", default="", help="extra K values to evaluate, e.g. 10,40")
    s.add_argument("--heads", default="per-task", choices=["per-task", "global"])
    s.add_argument("--shots", type=int, default=10)
    s.add_argument("--samples", type=int, default=25, help="head-scoring samples per task")
    s.add_argument("--n-test", type=int, default=50)
    s.add_argument("--aie-impl", default="fast", choices=["fast", "reference"])
    s.add_argument("--frame", default="answers", choices=["answers", "context"],
                   help="AttnLRP frame in ICL prompts")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/latest")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("steer", help="continue a prompt with and without a task's vector")
    s.add_argument("prompt", help=r"the prompt; \n escapes are decoded (e.g. 'Q: cat\nA:')")
    s.add_argument("--task", required=True)
    s.add_argument("--model", default="smollm2-135m")
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

    from fvlens.analyses.cli import add_parsers as add_analyses
    from fvlens.relational.cli import add_parsers as add_relational

    add_relational(sub)
    add_analyses(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotImplementedError) as err:
        print(f"fvlens: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
