"""Relational-knowledge benchmark on one model; writes JSON (one section per part).

    python benchmarks/relational.py [--model smollm2-135m] \
        --out benchmarks/results/relational.json \
        --sections finetune,decoding,bank,bank_decoding,analogies,similarity \
        [--ratings FILE] [--banks passing,all]

- finetune: held-out zero-shot top-1 of zero-shot, 10-shot ICL, the extracted AIE and AttnLRP
  FVs, and fine-tuned FVs from every init (aie, attnlrp, zeros, random) plus the fine-tuned
  DFV, for the acceptance tasks (capitalize, present-past).
- decoding: the relation-word rank of extracted vs fine-tuned FVs (same tasks).
- bank: one fine-tuned FV per built-in word relation, its layer chosen on validation among
  --candidates, each with its quality (validation top-1 vs the ICL reference on the same
  queries); the vectors are saved to --bank.
- bank_decoding: the bank's FVs through the unembedding (relation-word ranks, top tokens)
  beside the ICL task vector of the same relation at the same layer.
- analogies: tasks/analogies.jsonl and tasks/analogies_hard.jsonl under every condition and
  composite variant (options chosen on validation items, reported on test with bootstrap
  intervals), on the passing bank and on all of it.
- similarity: relation vectors of the ratings' subtypes (one layer for all, chosen on
  validation), their quality, relation level on all and on the passing ones, pair level. The
  ratings file is read from ../shared/data and never copied; per-relation-pair mean ratings
  are dropped from the JSON.

Sections already in the output file are kept unless re-run, so parts can run separately.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from fvlens.provenance import machine, versions

TASKS = ("capitalize", "present-past")
RATINGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "relsim" / \
    "relsim_mean_ratings.csv"  # ../shared/data beside the checkout


def bench_finetune(model, tasks, steps: int) -> tuple[dict, dict]:
    from fvlens.evaluation import evaluate
    from fvlens.plan import extract_vectors
    from fvlens.prompts import icl_prompts, zero_shot_prompts
    from fvlens.relational.finetune import FinetuneConfig, split_pairs, finetune

    out, vectors_out = {}, {}
    for name in tasks:
        t0 = time.perf_counter()
        base = FinetuneConfig(steps=steps)
        vec = {m: extract_vectors(model, name, select=(m,), k=base.k, seed=base.seed)
               for m in ("aie", "attnlrp")}
        task = vec["aie"].plan.task
        _, _, test_q = split_pairs(task, base)
        train, _ = task.split(test_fraction=base.test_fraction, seed=base.seed)
        zs = zero_shot_prompts(model, test_q)
        top1 = {"zero_shot": evaluate(model, zs).top1,
                "icl": evaluate(model, icl_prompts(model, test_q, train, shots=10,
                                                   seed=base.seed)).top1}
        for m in ("aie", "attnlrp"):
            top1[f"extracted_{m}_fv"] = evaluate(model, zs, fwd_hooks=vec[m].fv[m].hooks()).top1
            top1[f"extracted_{m}_dfv"] = evaluate(
                model, zs, fwd_hooks=vec[m].dfv[m].hooks(scale=vec[m].dfv_scale[m])).top1
        runs = {}
        kept = {}
        for inject, init in (("fv", "aie"), ("fv", "attnlrp"), ("fv", "zeros"),
                             ("fv", "random"), ("dfv", "aie")):
            cfg = dataclasses.replace(base, inject=inject, init=init)
            src = vec["attnlrp"] if init == "attnlrp" else vec["aie"]
            t1 = time.perf_counter()
            res = finetune(model, task, cfg, vectors=src, progress=False)
            key = f"finetuned_{inject}_{init}"
            top1[key] = evaluate(model, zs, fwd_hooks=res.vector.hooks()).top1
            runs[key] = {"lr": res.lr, "best_step": res.best_step,
                         "layer": getattr(res.vector, "layer", None),
                         "seconds": time.perf_counter() - t1,
                         "val_top1": [h["val_top1"] for h in res.history],
                         "val_loss": [h["val_loss"] for h in res.history]}
            kept[key] = res
            print(name, key, f"{top1[key]:.3f}", flush=True)
        out[name] = {"n_test": len(test_q), "held_out_top1": top1, "runs": runs,
                     "fv_layer": {m: vec[m].fv[m].layer for m in vec},
                     "seconds": time.perf_counter() - t0}
        vectors_out[name] = {"task": task, "extracted_aie": vec["aie"].fv["aie"],
                             "extracted_attnlrp": vec["attnlrp"].fv["attnlrp"],
                             **{k: r.vector for k, r in kept.items()}}
        print(name, json.dumps(top1), flush=True)
    return out, vectors_out


def bench_decoding(model, vectors) -> dict:
    from fvlens.relational.decoding import decode, decode_heads, relation_word_rank
    from fvlens.steering import DistributedFV

    out = {}
    for name, vs in vectors.items():
        task = vs.pop("task")
        row = {}
        for key, v in vs.items():
            if isinstance(v, DistributedFV):
                heads = decode_heads(model, v, k=3, words=task.relation_words)
                row[key] = {"best_head_rank": min(h["relation"]["best_rank"] for h in heads),
                            "heads": [{"head": list(h["head"]), "norm": h["norm"],
                                       "best_rank": h["relation"]["best_rank"],
                                       "top": [t.token for t in h["top"]]} for h in heads]}
            else:
                row[key] = relation_word_rank(model, v, task.relation_words) | {
                    "top10": [t.token for t in decode(model, v, k=10)]}
        out[name] = row
    return out


def _sign_test(a, b) -> float | None:
    """Two-sided sign test of a < b over the pairs that differ."""
    from scipy.stats import binomtest

    wins, n = sum(x < y for x, y in zip(a, b)), sum(x != y for x, y in zip(a, b))
    return float(binomtest(wins, n).pvalue) if n else None


def bench_bank_decoding(model, args) -> dict:
    """The bank's fine-tuned FVs through the unembedding, beside the unfine-tuned ICL task
    vector of the same relation at the same layer (from the same training pairs)."""
    import statistics

    from fvlens.relational.bank import RelationBank
    from fvlens.relational.decoding import decode, relation_word_rank
    from fvlens.relational.finetune import split_pairs
    from fvlens.relational.taskvec import task_vectors
    from fvlens.tasks import load_task

    bank = RelationBank.load(args.bank, model=model)
    cfg = _finetune_cfg(args, pairs=20, n_val=30)
    passing = set(bank.passing(args.pass_ratio))
    rows = {}
    for name, v in zip(bank.names, bank.vectors):
        task = load_task(name)
        train_q, _, _ = split_pairs(task, cfg)
        icl_tv = task_vectors(model, train_q, shots=cfg.tv_shots, seed=cfg.seed)[v.layer]
        rows[name] = {"layer": v.layer, "passes": name in passing}
        for key, vec in (("finetuned", v.vector), ("icl_task_vector", icl_tv)):
            rows[name][key] = relation_word_rank(model, vec, task.relation_words) | {
                "top10": [t.token for t in decode(model, vec, k=10)]}
        print(name, {k: rows[name][k]["best_rank"] for k in ("finetuned", "icl_task_vector")},
              flush=True)
    summary = {}
    for label, names in (("all", list(rows)), ("passing", [n for n in rows if rows[n]["passes"]])):
        ft = [rows[n]["finetuned"]["best_rank"] for n in names]
        tv = [rows[n]["icl_task_vector"]["best_rank"] for n in names]
        summary[label] = {"n": len(names),
                          "median_best_rank": {"finetuned": statistics.median(ft) if ft else None,
                                               "icl_task_vector": statistics.median(tv) if tv
                                               else None},
                          "finetuned_better": sum(a < b for a, b in zip(ft, tv)),
                          "sign_test_p": _sign_test(ft, tv),
                          "ties": sum(a == b for a, b in zip(ft, tv)),
                          "top100": {"finetuned": sum(r < 100 for r in ft),
                                     "icl_task_vector": sum(r < 100 for r in tv)}}
    return {"relations": rows, "summary": summary, "vocab": model.cfg.d_vocab,
            "folder": str(args.bank)}


def _section(fn, *args, **kw) -> dict:
    """Run one section and record its own provenance (sections of one file can come from
    different runs)."""
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out | {"provenance": {"machine": machine(), "versions": versions(),
                                 "seconds": time.perf_counter() - t0,
                                 "date": time.strftime("%Y-%m-%d")}}


def _finetune_cfg(args, **over):
    from fvlens.relational.finetune import FinetuneConfig

    kw = dict(init=args.init, target=args.target, steps=args.bank_steps, seed=0)
    return FinetuneConfig(**(kw | over))


def bench_bank(model, args) -> dict:
    """The analogy bank: one FV per built-in word relation, its layer chosen on validation,
    with its quality (validation top-1 vs the ICL reference)."""
    from fvlens.relational.bank import build_bank
    from fvlens.relational.itemgen import ITEM_RELATIONS
    from fvlens.relational.quality import summarize

    cfg = _finetune_cfg(args, pairs=20, n_val=30, layer=model.cfg.n_layers // 3)
    bank, fitted = build_bank(model, ITEM_RELATIONS, Path(args.bank), cfg,
                              candidates=args.candidates, pass_ratio=args.pass_ratio)
    return {"settings": dataclasses.asdict(cfg) | {"candidates": args.candidates,
                                                   "pass_ratio": args.pass_ratio},
            "quality": summarize([f.quality for f in fitted]),
            "candidates": {f.quality.name: f.candidates for f in fitted},
            "folder": str(args.bank)}


def bench_analogies(model, args) -> dict:
    """Every condition and composite variant on both item files, on the passing bank and on
    all of it."""
    from fvlens.relational.analogies import CONDITIONS, AnalogyConfig, evaluate_analogies
    from fvlens.relational.bank import RelationBank
    from fvlens.relational.items import load_items
    from fvlens.tasks import task_dir

    bank = RelationBank.load(args.bank, model=model)
    items = [it for f in args.items.split(",") if f.strip()
             for it in load_items(task_dir() / f.strip())]
    cfg = AnalogyConfig()
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()] or CONDITIONS
    out = {"settings": dataclasses.asdict(cfg) | {"conditions": list(conditions),
                                                  "items": args.items},
           "n_items": len(items), "banks": {}}
    passing = bank.passing(args.pass_ratio)
    wanted = [b.strip() for b in args.banks.split(",") if b.strip()]
    for label, names in [(k, v) for k, v in (("passing", passing), ("all", list(bank.names)))
                         if k in wanted]:
        if label == "all" and len(names) == len(passing):
            out["banks"]["all"] = {"same_as": "passing"}
            continue
        if not names:
            out["banks"][label] = {"skipped": "no vector passes"}
            continue
        t0 = time.perf_counter()
        out["banks"][label] = evaluate_analogies(model, items, bank.subset(names), cfg=cfg,
                                                 conditions=conditions)
        out["banks"][label]["seconds"] = time.perf_counter() - t0
        print(label, json.dumps({c: v["mc"]["mean"] for c, v in
                                 out["banks"][label]["test"].items()}), flush=True)
    return out


def _strip_ratings(level: dict) -> None:
    """The ratings stay out of the repository: drop each relation pair's mean rating."""
    for r in level.values():
        for item in r.get("items", []) if isinstance(r, dict) else []:
            item.pop("rating", None)


def bench_similarity(model, args) -> dict:
    from fvlens.relational.ratings import read_ratings
    from fvlens.relational.similarity_study import run_similarity

    cfg = _finetune_cfg(args, pairs=16, batch_size=8, n_val=1000, test_fraction=0.2,
                        n_test=None)
    res, _ = run_similarity(model, read_ratings(args.ratings), finetune_cfg=cfg, max_rows=1500,
                            candidates=args.sim_candidates, pass_ratio=args.pass_ratio)
    for level in ("relation_level", "relation_level_passing"):
        _strip_ratings(res.get(level, {}))
    return res | {"settings": dataclasses.asdict(cfg) | {"candidates": args.sim_candidates},
                  "ratings_file": Path(args.ratings).name}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default="benchmarks/results/relational.json")
    ap.add_argument("--sections", default="bank,analogies,similarity")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--steps", type=int, default=60, help="fine-tuning steps (acceptance)")
    ap.add_argument("--bank-steps", type=int, default=30)
    ap.add_argument("--bank", default="/tmp/fvlens-relational-bank")
    ap.add_argument("--candidates", default="10,screen",
                    help="bank layer candidates (fvlens.relational.bank.parse_candidates)")
    ap.add_argument("--sim-candidates", default="10",
                    help="similarity layer candidates (one is chosen for all relations)")
    ap.add_argument("--banks", default="passing,all",
                    help="analogies: which banks to evaluate (the passing vectors, all of them)")
    ap.add_argument("--conditions", default="",
                    help="analogies: the conditions to run (default all: baselines and every "
                         "composite variant)")
    ap.add_argument("--items", default="analogies.jsonl,analogies_hard.jsonl",
                    help="analogies: item files under tasks/")
    ap.add_argument("--init", default="zeros")
    ap.add_argument("--target", default="first")
    ap.add_argument("--pass-ratio", type=float, default=0.5)
    ap.add_argument("--ratings", default=str(RATINGS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    from fvlens.models import load_model

    model = load_model(args.model)
    for p in model.parameters():
        p.requires_grad_(False)
    path = Path(args.out)
    result = json.loads(path.read_text()) if path.is_file() else {}
    result |= {"benchmark": "relational", "model": args.model, "machine": machine(),
               "versions": versions()}
    result.setdefault("settings", {})

    def dump():
        os.makedirs(path.parent, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=str))

    vectors = None
    if "finetune" in sections or "decoding" in sections:
        result["finetune"], vectors = bench_finetune(model, args.tasks.split(","), args.steps)
        result["settings"]["finetune"] = {"steps": args.steps, "tasks": args.tasks}
        dump()
    if "decoding" in sections:
        result["decoding"] = bench_decoding(model, vectors)
        dump()
    if "bank" in sections:
        result["bank"] = _section(bench_bank, model, args)
        dump()
    if "bank_decoding" in sections:
        result["bank_decoding"] = _section(bench_bank_decoding, model, args)
        dump()
    if "analogies" in sections:
        result["analogies"] = _section(bench_analogies, model, args)
        dump()
    if "similarity" in sections:
        if Path(args.ratings).is_file():
            result["similarity"] = _section(bench_similarity, model, args)
        else:
            result["similarity"] = {"skipped": f"ratings file {args.ratings} absent"}
        dump()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
