"""Relational-knowledge benchmark on the embedded model; writes JSON (one section per part).

    python benchmarks/relational.py --out benchmarks/results/relational.json \
        --sections finetune,decoding,analogies,similarity [--ratings FILE]

- finetune: held-out zero-shot top-1 of zero-shot, 10-shot ICL, the extracted AIE and AttnLRP
  FVs, and fine-tuned FVs from every init (aie, attnlrp, zeros, random) plus the fine-tuned
  DFV, for the acceptance tasks (capitalize, present-past).
- decoding: the relation-word rank of extracted vs fine-tuned FVs (same tasks).
- analogies: a bank of fine-tuned FVs (init zeros at layer n_layers // 3) over the built-in
  word relations; tasks/analogies.jsonl under every condition.
- similarity: relation and pair levels on the ratings file (never copied into the repo).

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
    "relsim_mean_ratings.csv"


def bench_finetune(model, tasks, steps: int) -> tuple[dict, dict]:
    from fvlens.evaluation import evaluate
    from fvlens.pipeline import extract_vectors
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


def bench_analogies(model, bank_dir: Path, steps: int) -> dict:
    from fvlens.relational.analogies import (ITEM_RELATIONS, build_bank, evaluate_analogies,
                                             load_items)
    from fvlens.relational.composite import CompositeConfig, RelationBank
    from fvlens.relational.finetune import FinetuneConfig
    from fvlens.tasks import task_dir

    t0 = time.perf_counter()
    layer = model.cfg.n_layers // 3
    if not any(bank_dir.glob("*.safetensors")):
        build_bank(model, ITEM_RELATIONS, bank_dir,
                   FinetuneConfig(init="zeros", layer=layer, steps=steps))
    t_bank = time.perf_counter() - t0
    bank = RelationBank.load(bank_dir)
    items = load_items(task_dir() / "analogies.jsonl")
    cfg = CompositeConfig()
    res = evaluate_analogies(model, items, bank, cfg=cfg)
    res.pop("choices", None)
    return res | {"bank_layer": layer, "bank_steps": steps, "bank_seconds": t_bank,
                  "composite": dataclasses.asdict(cfg),
                  "seconds": time.perf_counter() - t0}


def bench_similarity(model, ratings: Path, steps: int) -> dict:
    from fvlens.relational.finetune import FinetuneConfig
    from fvlens.relational.ratings import read_ratings
    from fvlens.relational.similarity import run_similarity

    t0 = time.perf_counter()
    cfg = FinetuneConfig(init="zeros", pairs=16, batch_size=8, steps=steps, val_fraction=0.25,
                         test_fraction=0.2, n_test=None)
    res, figs = run_similarity(model, read_ratings(ratings), finetune_cfg=cfg, max_rows=1500)
    for r in res["relation_level"].values():  # the ratings stay out of the repository
        for item in r["items"]:
            item.pop("rating")
    return res | {"finetune_cfg": dataclasses.asdict(cfg), "ratings_file": ratings.name,
                  "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/relational.json")
    ap.add_argument("--sections", default="finetune,decoding,analogies,similarity")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--steps", type=int, default=60, help="fine-tuning steps (acceptance)")
    ap.add_argument("--bank-steps", type=int, default=30)
    ap.add_argument("--bank", default="/tmp/fvlens-relational-bank")
    ap.add_argument("--ratings", default=str(RATINGS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    from fvlens.models import load_model

    model = load_model("smollm2-135m")
    for p in model.parameters():
        p.requires_grad_(False)
    path = Path(args.out)
    result = json.loads(path.read_text()) if path.is_file() else {}
    result |= {"benchmark": "relational", "model": "smollm2-135m", "machine": machine(),
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
    if "analogies" in sections:
        result["analogies"] = bench_analogies(model, Path(args.bank), args.bank_steps)
        dump()
    if "similarity" in sections:
        if Path(args.ratings).is_file():
            result["similarity"] = bench_similarity(model, Path(args.ratings), args.bank_steps)
        else:
            result["similarity"] = {"skipped": f"ratings file {args.ratings} absent"}
        dump()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
