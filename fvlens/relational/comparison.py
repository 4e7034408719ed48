"""Held-out comparison of one task: zero-shot, ICL, the extracted vector and fine-tuned ones.

``held_out_comparison`` is what ``fvlens finetune`` reports: every condition's zero-shot top-1
on the task's test split (all of its queries, unlike ``fvlens run``, which keeps only the
queries the ICL prompt gets right).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fvlens.modeltype import Model

from fvlens.evaluation import evaluate
from fvlens.plan import extract_vectors
from fvlens.prompts import icl_prompts, zero_shot_prompts
from fvlens.relational.finetune import FinetuneConfig, finetune, split_pairs
from fvlens.tasks import Task, load_task

__all__ = ["held_out_comparison"]


def held_out_comparison(model: Model, task: str | Task,
                        cfg: FinetuneConfig = FinetuneConfig(), *,
                        also: Sequence[str] = ("random_init", "finetuned_other"),
                        vectors=None, progress: bool = True) -> dict:
    """Held-out zero-shot top-1 of the baselines and the fine-tuned vectors of one task.

    Args:
        cfg: the main fine-tuning run ("finetuned").
        also: extra runs: "random_init" (same settings, init="random") and
            "finetuned_other" (the other injection, "fv" ↔ "dfv", same init).
        vectors: the extracted vectors, if computed (see ``finetune``).

    Returns:
        ``{"held_out_top1": {"zero_shot", "icl", "extracted", "finetuned", ...}, "n_test",
        "runs": {name: {...history...}}, "results": {name: FinetuneResult}}``.
    """
    task = task if isinstance(task, Task) else load_task(task)
    unknown = set(also) - {"random_init", "finetuned_other"}
    if unknown:
        raise ValueError(f"unknown comparison runs {sorted(unknown)}; choose from "
                         "('random_init', 'finetuned_other')")
    _, _, test_q = split_pairs(task, cfg)
    if vectors is None:
        vectors = extract_vectors(model, task, select=(cfg.selection,), k=cfg.k, seed=cfg.seed,
                                  shots=cfg.shots)
    train_split, _ = task.split(test_fraction=cfg.test_fraction, seed=cfg.seed)
    zs = zero_shot_prompts(model, test_q)
    top1 = {"zero_shot": evaluate(model, zs).top1,
            "icl": evaluate(model, icl_prompts(model, test_q, train_split, shots=cfg.shots,
                                               seed=cfg.seed)).top1}
    m = cfg.selection
    extracted = {"fv": vectors.fv[m].hooks(),
                 "dfv": vectors.dfv[m].hooks(scale=vectors.dfv_scale[m])}
    top1["extracted"] = evaluate(model, zs, fwd_hooks=extracted[cfg.inject]).top1
    other = "dfv" if cfg.inject == "fv" else "fv"
    runs = {"finetuned": cfg}
    if "random_init" in also:
        runs["random_init"] = dataclasses.replace(cfg, init="random")
    if "finetuned_other" in also:
        runs[f"finetuned_{other}"] = dataclasses.replace(cfg, inject=other)
        top1[f"extracted_{other}"] = evaluate(model, zs, fwd_hooks=extracted[other]).top1
    results, info = {}, {}
    for name, c in runs.items():
        res = finetune(model, task, c, vectors=vectors, progress=progress)
        results[name] = res
        top1[name] = evaluate(model, zs, fwd_hooks=res.vector.hooks()).top1
        info[name] = {"inject": c.inject, "init": c.init, "lr": res.lr,
                      "best_step": res.best_step, "history": list(res.history),
                      "layer": getattr(res.vector, "layer", None),
                      "n_heads": len(res.vector.heads)}
    return {"task": task.name, "n_test": len(test_q), "held_out_top1": top1, "runs": info,
            "results": results}
