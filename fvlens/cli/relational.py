"""Subcommands ``fvlens finetune``, ``fvlens similarity`` and ``fvlens analogies``.

``add_parsers(subparsers)`` registers them on the ``fvlens`` parser; each handler parses its
options, calls the library and writes ``DIR/results.json`` (plus vectors and figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from fvlens.cli.common import add_model_args, load_from_args
from fvlens.provenance import write_results

__all__ = ["add_parsers", "cmd_finetune", "cmd_similarity", "cmd_analogies"]


def _provenance(model_name: str, settings: dict) -> dict:
    from fvlens.provenance import machine, versions

    return {"model": model_name, "settings": settings, "versions": versions(),
            "machine": machine()}


def _finetune_cfg(args: argparse.Namespace, **over):
    from fvlens.relational.finetune import FinetuneConfig

    kw = dict(pairs=args.pairs, steps=args.steps, lr=args.lr, lr_scale=args.lr_scale,
              batch_size=args.batch_size, seed=args.seed, layer=args.layer)
    return FinetuneConfig(**(kw | over))


def _add_finetune_options(s: argparse.ArgumentParser, *, steps: int = 60) -> None:
    s.add_argument("--pairs", type=int, default=20, help="training pairs")
    s.add_argument("--steps", type=int, default=steps, help="Adam steps")
    s.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: scale-aware, --lr-scale × activation RMS)")
    s.add_argument("--lr-scale", type=float, default=0.05)
    s.add_argument("--batch-size", type=int, default=10)
    s.add_argument("--layer", type=int, default=None,
                   help="FV injection layer (default: the extracted FV's layer)")
    s.add_argument("--seed", type=int, default=0)


def cmd_finetune(args: argparse.Namespace) -> int:
    from fvlens.relational.decoding import relation_word_rank
    from fvlens.relational.finetune import held_out_comparison, save_vector
    from fvlens.steering import FunctionVector
    from fvlens.tasks import load_task

    task = load_task(args.task)
    cfg = _finetune_cfg(args, inject=args.inject, init=args.init, k=args.k, n_test=args.n_test,
                        shots=args.shots)
    model = load_from_args(args)
    t0 = time.perf_counter()
    also = () if args.no_compare else ("random_init", "finetuned_other")
    res = held_out_comparison(model, task, cfg, also=also)
    out = Path(args.out)
    results = _provenance(args.model, dataclasses.asdict(cfg)) | {
        "task": task.name, "n_test": res["n_test"], "held_out_top1": res["held_out_top1"],
        "runs": res["runs"]}
    if task.relation_words:
        results["relation_words"] = {}
        for name, r in res["results"].items():
            for which, vec in (("initial", r.initial), ("finetuned", r.vector)):
                if isinstance(vec, FunctionVector):
                    results["relation_words"].setdefault(name, {})[which] = relation_word_rank(
                        model, vec, task.relation_words)
    main = res["results"]["finetuned"].vector
    results["vector"] = str(save_vector(out / f"{task.name}.safetensors", main,
                                        meta={"task": task.name, "run": "finetuned"}))
    for name, r in res["results"].items():
        if name != "finetuned":
            save_vector(out / "runs" / f"{task.name}.{name}.safetensors", r.vector,
                        meta={"task": task.name, "run": name})
    results["seconds"] = time.perf_counter() - t0
    for k, v in results["held_out_top1"].items():
        print(f"{k:>18}: {v:.3f}")
    print(f"wrote {write_results(out, results)}")
    return 0


def cmd_similarity(args: argparse.Namespace) -> int:
    from fvlens.relational.ratings import read_ratings
    from fvlens.relational.similarity import run_similarity

    rows = read_ratings(args.ratings)
    model = load_from_args(args)
    cfg = _finetune_cfg(args, init="zeros", inject="fv", val_fraction=0.25, test_fraction=0.2,
                        n_test=None)
    t0 = time.perf_counter()
    res, figs = run_similarity(
        model, rows, layer=args.layer, n_relations=args.relations, max_rows=args.max_rows,
        finetune_cfg=None if args.no_finetune else cfg, icl_shots=args.icl_shots,
        n_perm=args.n_perm, n_boot=args.n_boot, seed=args.seed)
    out = Path(args.out)
    from fvlens.plots import save

    for name, fig in figs.items():
        save(fig, out / f"{name}.html")
    results = _provenance(args.model, {k: v for k, v in vars(args).items() if k != "func"}) | res
    results["seconds"] = time.perf_counter() - t0
    for level in ("relation_level", "pair_level"):
        for rep, r in res[level].items():
            rr = r.get("all", r)
            line = f"{level:>15} {rep:>14}: n={rr['n']:<5}"
            for stat in ("spearman", "pearson"):
                ci = rr[stat].get("ci95")
                ci_text = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "[no CI]"
                p = rr[stat].get("p_perm")
                p_text = f"p={p:.3g}" if p is not None else "p=n/a"
                line += f"  {stat} {rr[stat]['r']:+.3f} {ci_text} {p_text}"
            print(line)
    print(f"wrote {write_results(out, results)}")
    return 0


def cmd_analogies(args: argparse.Namespace) -> int:
    from fvlens.relational.analogies import (CONDITIONS, ITEM_RELATIONS, build_bank,
                                             evaluate_analogies, load_items)
    from fvlens.relational.composite import CompositeConfig, RelationBank
    from fvlens.tasks import task_dir

    items = load_items(args.items or task_dir() / "analogies.jsonl")
    if args.max_items and len(items) > args.max_items:
        import random

        items = random.Random(args.seed).sample(items, args.max_items)
    conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    bad = set(conditions) - set(CONDITIONS)
    if bad:
        raise ValueError(f"unknown conditions {sorted(bad)}; choose from {CONDITIONS}")
    model = load_from_args(args)
    bank_dir = Path(args.bank)
    if not any(bank_dir.glob("*.safetensors")):
        if not args.build_bank:
            raise FileNotFoundError(f"bank {bank_dir} holds no vectors; pass --build-bank "
                                    f"(fine-tunes {','.join(ITEM_RELATIONS)[:60]}…) or fill it "
                                    "with `fvlens finetune --task T --out DIR`")
        tasks = ITEM_RELATIONS if args.build_bank == "default" else args.build_bank.split(",")
        build_bank(model, tasks, bank_dir, _finetune_cfg(
            args, init="zeros", layer=args.layer if args.layer is not None
            else model.cfg.n_layers // 3))
    bank = RelationBank.load(bank_dir)
    cfg = CompositeConfig(steps=args.fit_steps, lr=args.fit_lr, affine=not args.no_affine,
                          init=args.fit_init)
    t0 = time.perf_counter()
    res = evaluate_analogies(model, items, bank, cfg=cfg, conditions=conditions)
    results = _provenance(args.model, {k: v for k, v in vars(args).items() if k != "func"}
                          | {"composite": dataclasses.asdict(cfg)}) | res
    results["seconds"] = time.perf_counter() - t0
    for cond, r in res["accuracy"].items():
        print(f"{cond:>12}: mc {r['mc']}  generative {r['generative']}  n={r['n']}")
    print(f"wrote {write_results(Path(args.out), results)}")
    return 0


def add_parsers(subparsers) -> None:
    """Register ``finetune``, ``similarity`` and ``analogies`` on ``fvlens``'s subparsers."""
    s = subparsers.add_parser("finetune", help="fine-tune a task's FV/DFV on a few pairs and "
                              "compare with extracted, random-init, zero-shot and ICL")
    add_model_args(s)
    s.add_argument("--task", required=True)
    s.add_argument("--init", default="aie", choices=["aie", "attnlrp", "zeros", "random"])
    s.add_argument("--inject", default="fv", choices=["fv", "dfv"])
    s.add_argument("--k", type=int, default=20, help="heads of the extracted vector")
    s.add_argument("--shots", type=int, default=10,
                   help="ICL demonstrations (extraction and baseline)")
    s.add_argument("--n-test", type=int, default=50, help="held-out queries")
    s.add_argument("--no-compare", action="store_true",
                   help="skip the random-init and other-injection runs")
    _add_finetune_options(s)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_finetune)

    s = subparsers.add_parser("similarity", help="relation vectors vs human relation-"
                              "similarity ratings (Chen, Peterson & Griffiths 2017)")
    add_model_args(s)
    s.add_argument("--ratings", required=True, help="mean-ratings CSV")
    s.add_argument("--relations", type=int, default=None,
                   help="relation subtypes used (seeded subset; default all)")
    s.add_argument("--max-rows", type=int, default=1500,
                   help="rating rows of the pair level (seeded subset; 0 = all)")
    s.add_argument("--no-finetune", action="store_true",
                   help="relation level without fine-tuned vectors (baselines only)")
    s.add_argument("--icl-shots", type=int, default=5,
                   help="demonstrations of the icl_mean relation vectors")
    s.add_argument("--n-perm", type=int, default=1000)
    s.add_argument("--n-boot", type=int, default=1000)
    _add_finetune_options(s, steps=30)
    s.set_defaults(pairs=16, batch_size=8)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_similarity)

    s = subparsers.add_parser("analogies", help="A:B::C:? with composite FVs over a bank of "
                              "fine-tuned relation vectors, and baselines")
    add_model_args(s)
    s.add_argument("--items", default=None,
                   help=".jsonl (SAT style) or .csv (A,B,C,D[,D_foil]); default "
                        "tasks/analogies.jsonl")
    s.add_argument("--bank", required=True,
                   help="folder of fine-tuned FVs ({relation}.safetensors)")
    s.add_argument("--build-bank", default=None, metavar="TASKS",
                   help="fine-tune the bank first when the folder is empty: 'default' or a "
                        "comma list of tasks")
    s.add_argument("--conditions", default=",".join(("none", "icl", "single_best", "oracle",
                                                     "composite")))
    s.add_argument("--fit-steps", type=int, default=20)
    s.add_argument("--fit-lr", type=float, default=0.3)
    s.add_argument("--fit-init", default="uniform", choices=["uniform", "best"])
    s.add_argument("--no-affine", action="store_true", help="weights sum to 1 (no scale)")
    s.add_argument("--max-items", type=int, default=0, help="seeded subset (0 = all)")
    _add_finetune_options(s)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_analogies)
