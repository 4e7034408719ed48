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


def _add_quality_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--pass-ratio", type=float, default=0.5,
                   help="a relation vector passes when its validation top-1 is ≥ this × the "
                        "ICL top-1 on the same queries (and > 0)")
    s.add_argument("--pass-metric", default="top1", choices=["top1", "top5"],
                   help="what the pass rule compares: top-1, or first-token top-5 (graded, "
                        "for relations with many right answers)")
    s.add_argument("--candidates", default="default",
                   help="settings tried per relation, chosen on validation: comma list of "
                        "layers and 'screen' (ICL task-vector start at its best layer); "
                        "default: --layer (or n_layers // 3) and screen")
    s.add_argument("--target", default="first", choices=["first", "full"],
                   help="train and score the first answer token or the whole answer")
    s.add_argument("--init", default="zeros", choices=["zeros", "random", "icl_mean"],
                   help="start of the relation vectors")
    s.add_argument("--n-val", type=int, default=None,
                   help="validation pairs per relation (capped at what the train split has "
                        "beyond the training pairs; default: all for similarity, 30 for a bank)")


def _add_finetune_options(s: argparse.ArgumentParser, *, steps: int = 60) -> None:
    s.add_argument("--pairs", type=int, default=20, help="training pairs")
    s.add_argument("--steps", type=int, default=steps, help="Adam steps")
    s.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: scale-aware, --lr-scale × activation RMS)")
    s.add_argument("--lr-scale", type=float, default=0.05,
                   help="scale-aware learning rate factor")
    s.add_argument("--batch-size", type=int, default=10, help="training pairs per step")
    s.add_argument("--layer", type=int, default=None,
                   help="FV injection layer (default: the extracted FV's layer; for a bank "
                        "n_layers // 3 beside the screened layer)")
    s.add_argument("--seed", type=int, default=0, help="splits, batches, subsets")


def cmd_finetune(args: argparse.Namespace) -> int:
    from fvlens.relational.decoding import relation_word_rank
    from fvlens.relational.comparison import held_out_comparison
    from fvlens.relational.finetune import save_vector
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


def _ci(c) -> str:
    return f"[{c[0]:+.2f}, {c[1]:+.2f}]" if c else "[no CI]"


def _quality_table(rows: list[dict]) -> str:
    from fvlens.tables import format_table

    table = [{"relation": r["name"], "layer": r["layer"], "val_top1": r["val_top1"],
              "icl_top1": r["icl_top1"], "val_top5": r["val_top5"], "icl_top5": r["icl_top5"],
              "n_val": r["n_val"], "train_top1": r["train_top1"],
              "test_top1": r["test_top1"] if r["test_top1"] is not None else "",
              "pass": "yes" if r["passes"] else "no", "reason": r["reason"]} for r in rows]
    return format_table(table, ["relation", "layer", "val_top1", "icl_top1", "val_top5",
                                "icl_top5", "n_val", "train_top1", "test_top1", "pass",
                                "reason"])


def _pass_line(q: dict) -> str:
    m = q.get("metric", "top1")
    return (f"{q['n_pass']} of {q['n']} relation vectors pass (validation {m} ≥ "
            f"{q['ratio']} × ICL {m} on the same queries, and > 0)")


def _passing_spearman(n_pass: int, level: dict) -> str:
    passing = level.get("finetuned")
    if not passing:
        return (f"no relation-level correlation on the passing vectors: "
                f"{level.get('skipped', 'none pass')}")
    sp = passing["spearman"]
    return (f"Spearman on the {n_pass} passing relation vectors: {sp['r']:+.3f} "
            f"{_ci(sp['ci95'])} (n={passing['n']} rated relation pairs, p={sp['p_perm']})")


def cmd_similarity(args: argparse.Namespace) -> int:
    from fvlens.relational.ratings import read_ratings
    from fvlens.relational.similarity_study import run_similarity

    rows = read_ratings(args.ratings)
    model = load_from_args(args)
    cfg = _finetune_cfg(args, init=args.init, inject="fv", target=args.target,
                        val_fraction=0.25, n_val=args.n_val, test_fraction=0.2, n_test=None)
    t0 = time.perf_counter()
    res, figs = run_similarity(
        model, rows, layer=args.layer, n_relations=args.relations, max_rows=args.max_rows,
        finetune_cfg=None if args.no_finetune else cfg, candidates=args.candidates,
        pass_ratio=args.pass_ratio, metric=args.pass_metric, icl_shots=args.icl_shots,
        n_perm=args.n_perm,
        n_boot=args.n_boot, seed=args.seed)
    out = Path(args.out)
    from fvlens.plots import save

    for name, fig in figs.items():
        save(fig, out / f"{name}.html")
    results = _provenance(args.model, {k: v for k, v in vars(args).items() if k != "func"}) | res
    results["seconds"] = time.perf_counter() - t0
    q = res.get("quality")
    if q:
        print(_quality_table(q["rows"]))
        print(_pass_line(q))
        print(_passing_spearman(q["n_pass"], res.get("relation_level_passing", {})))
        for m, other in res.get("by_metric", {}).items():
            if m != q.get("metric", "top1"):
                print(f"under the {m} rule: {other['n_pass']} of {other['n']} pass; "
                      + _passing_spearman(other["n_pass"], other["relation_level_passing"]))
    for level in ("relation_level", "relation_level_passing", "pair_level"):
        for rep, r in res.get(level, {}).items():
            if not isinstance(r, dict) or "n" not in r.get("all", r):
                continue
            rr = r.get("all", r)
            line = f"{level:>22} {rep:>14}: n={rr['n']:<5}"
            for stat in ("spearman", "pearson"):
                p = rr[stat].get("p_perm")
                p_text = f"p={p:.3g}" if p is not None else "p=n/a"
                line += f"  {stat} {rr[stat]['r']:+.3f} {_ci(rr[stat].get('ci95'))} {p_text}"
            print(line)
    print(f"wrote {write_results(out, results)}")
    return 0


def _print_analogies(label: str, res: dict) -> None:
    print(f"-- {label}: {len(res['bank'])} vectors, {res['split']['test']} test items "
          f"({res['split']['val']} validation)")
    for cond, r in res["test"].items():
        parts = [f"{k} {r[k]['mean']:.3f} {_ci(r[k]['ci95'])}" for k in ("mc", "generative")
                 if r[k]["mean"] is not None]
        chosen = res["options"].get(cond, {}).get("chosen")
        print(f"{cond:>12}: " + "  ".join(parts) + (f"  ({chosen})" if chosen else ""))
    comp = res.get("composite")
    if comp and "vs_single_best" in comp:
        d = comp["vs_single_best"]
        print(f"chosen composite (on {comp['selected_on']}): {comp['variant']}; minus single "
              f"best on test: mc {d['mc']['diff']:+.3f} {_ci(d['mc']['ci95'])}, generative "
              f"{d['generative']['diff']:+.3f} {_ci(d['generative']['ci95'])}")


def cmd_analogies(args: argparse.Namespace) -> int:
    from fvlens.relational.analogies import CONDITIONS, AnalogyConfig, evaluate_analogies
    from fvlens.relational.bank import RelationBank, build_bank
    from fvlens.relational.composite import CompositeConfig
    from fvlens.relational.itemgen import ITEM_RELATIONS
    from fvlens.relational.items import load_items
    from fvlens.tasks import task_dir

    paths = args.items.split(",") if args.items else [
        str(task_dir() / "analogies.jsonl"), str(task_dir() / "analogies_hard.jsonl")]
    items = [it for p in paths for it in load_items(p)]
    if args.max_items and len(items) > args.max_items:
        import random

        items = random.Random(args.seed).sample(items, args.max_items)
    conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    bad = set(conditions) - set(CONDITIONS)
    if bad:
        raise ValueError(f"unknown conditions {sorted(bad)}; choose from {CONDITIONS}")
    bank_dir = Path(args.bank)
    if not any(bank_dir.glob("*.safetensors")) and not args.build_bank:
        raise FileNotFoundError(f"bank {bank_dir} holds no vectors; pass --build-bank "
                                f"(fine-tunes {','.join(ITEM_RELATIONS)[:60]}…) or fill it "
                                "with `fvlens finetune --task T --out DIR`")
    cfg = AnalogyConfig(fit=CompositeConfig(steps=args.fit_steps, lr=args.fit_lr),
                        val_fraction=args.val_fraction, seed=args.seed,
                        taus=tuple(float(t) for t in args.taus.split(",")),
                        ms=tuple(int(m) for m in args.ms.split(",")), n_boot=args.n_boot)
    model = load_from_args(args)
    t0 = time.perf_counter()
    if not any(bank_dir.glob("*.safetensors")):
        tasks = ITEM_RELATIONS if args.build_bank == "default" else args.build_bank.split(",")
        build_bank(model, tasks, bank_dir, _finetune_cfg(
            args, init=args.init, target=args.target, n_val=args.n_val,
            layer=args.layer if args.layer is not None
            else model.cfg.n_layers // 3), candidates=args.candidates,
            pass_ratio=args.pass_ratio, metric=args.pass_metric)
    bank = RelationBank.load(bank_dir, model=model)
    passing = bank.passing(args.pass_ratio, args.pass_metric)
    results = _provenance(args.model, {k: v for k, v in vars(args).items() if k != "func"}
                          | {"analogy_config": dataclasses.asdict(cfg)})
    if any(q is not None for q in bank.quality):
        from fvlens.relational.quality import summarize

        q = summarize([dataclasses.replace(q, ratio=args.pass_ratio, metric=args.pass_metric)
                       for q in bank.quality if q is not None])
        results["quality"] = q
        print(_quality_table(q["rows"]))
        print(_pass_line(q))
    banks = {"passing": passing} if len(passing) == len(bank) else {
        "passing": passing, "all": list(bank.names)}
    results["banks"] = {}
    for label, names in banks.items():
        if not names:
            results["banks"][label] = {"skipped": "no vector passes"}
            continue
        res = evaluate_analogies(model, items, bank.subset(names), cfg=cfg,
                                 conditions=conditions)
        results["banks"][label] = res
        _print_analogies(f"bank: {label} vectors", res)
    results["seconds"] = time.perf_counter() - t0
    print(f"wrote {write_results(Path(args.out), results)}")
    return 0


class _DEFAULTS(argparse.HelpFormatter):
    """``--help`` shows every option's true default (unless its help already explains it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.required
                or any(action.default is v for v in (None, argparse.SUPPRESS, False))):
            return text
        return f"{text} (default: %(default)s)".strip()


def add_parsers(subparsers) -> None:
    """Register ``finetune``, ``similarity`` and ``analogies`` on ``fvlens``'s subparsers."""
    s = subparsers.add_parser("finetune", formatter_class=_DEFAULTS,
                              help="fine-tune a task's FV/DFV on a few pairs and compare "
                                   "with extracted, random-init, zero-shot and ICL")
    add_model_args(s)
    s.add_argument("--task", required=True, help="task name or path")
    s.add_argument("--init", default="aie", choices=["aie", "attnlrp", "zeros", "random"],
                   help="start: an extracted vector (its head selection) or zeros/random")
    s.add_argument("--inject", default="fv", choices=["fv", "dfv"], help="vector kind")
    s.add_argument("--k", type=int, default=20, help="heads of the extracted vector")
    s.add_argument("--shots", type=int, default=10,
                   help="ICL demonstrations (extraction and baseline)")
    s.add_argument("--n-test", type=int, default=50, help="held-out queries")
    s.add_argument("--no-compare", action="store_true",
                   help="skip the random-init and other-injection runs")
    _add_finetune_options(s)
    s.add_argument("--out", required=True, help="directory for results.json")
    s.set_defaults(func=cmd_finetune)

    s = subparsers.add_parser("similarity", formatter_class=_DEFAULTS,
                              help="relation vectors vs human relation-similarity ratings "
                                   "(Chen, Peterson & Griffiths 2017)")
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
    s.add_argument("--n-perm", type=int, default=1000, help="permutations of the p-values")
    s.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the CIs")
    _add_quality_options(s)
    _add_finetune_options(s, steps=30)
    s.set_defaults(pairs=16, batch_size=8, n_val=1000)
    s.add_argument("--out", required=True, help="directory for results.json")
    s.set_defaults(func=cmd_similarity)

    s = subparsers.add_parser("analogies", formatter_class=_DEFAULTS,
                              help="A:B::C:? with composite FVs over a bank of fine-tuned "
                                   "relation vectors, and baselines")
    add_model_args(s)
    s.add_argument("--items", default=None,
                   help="comma list of .jsonl (SAT style) or .csv (A,B,C,D[,D_foil]) files; "
                        "default tasks/analogies.jsonl,tasks/analogies_hard.jsonl")
    s.add_argument("--bank", required=True,
                   help="folder of fine-tuned FVs ({relation}.safetensors)")
    s.add_argument("--build-bank", default=None, metavar="TASKS",
                   help="fine-tune the bank first when the folder is empty: 'default' or a "
                        "comma list of tasks")
    s.add_argument("--conditions", default=",".join(
        ("none", "icl", "single_best", "oracle", "softmax", "affine", "similarity", "top_m")),
        help="conditions evaluated")
    s.add_argument("--fit-steps", type=int, default=20, help="Adam steps of fitted weights")
    s.add_argument("--fit-lr", type=float, default=0.3, help="Adam lr of fitted weights")
    s.add_argument("--taus", default="0.05,0.1,0.2", help="similarity temperatures tried")
    s.add_argument("--ms", default="2,3,5", help="top_m mixture sizes tried")
    s.add_argument("--val-fraction", type=float, default=0.3,
                   help="items on which options and the composite variant are chosen")
    s.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the CIs")
    s.add_argument("--max-items", type=int, default=0, help="seeded subset (0 = all)")
    _add_quality_options(s)
    _add_finetune_options(s, steps=30)
    s.set_defaults(n_val=30)
    s.add_argument("--out", required=True, help="directory for results.json")
    s.set_defaults(func=cmd_analogies)
