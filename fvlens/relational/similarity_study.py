"""The whole relation-similarity study: relation vectors fitted and checked, then compared
with human ratings at the relation and the pair level (``fvlens similarity``).

Fine-tuned relation vectors come from ``fvlens.relational.bank.fit_relations`` at one layer
for all relations (chosen on validation among the candidates: cosines compare vectors of one
residual layer), each with its ``VectorQuality``. The relation level is computed on every
relation and on the relations whose vector passes the quality threshold, for every
representation (the baselines too, so the two sets compare like with like).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import torch
from torch import Tensor
from fvlens.modeltype import Model

from fvlens.relational.quality import DEFAULT_PASS_RATIO, METRICS, summarize
from fvlens.relational.ratings import Rating, relation_pairs
from fvlens.relational.similarity import (icl_mean_vectors, pair_level, pair_representations,
                                          random_draws, random_vectors, relation_level,
                                          relation_task, scatter, unembed_difference)
from fvlens.tasks import Pair

__all__ = ["run_similarity"]


def _relation_levels(rows, names, vectors: dict[str, Tensor], stats, d_model, seed) -> dict:
    out = {rep: relation_level(rows, names, v, **stats) for rep, v in vectors.items()}
    quick = dict(n_perm=0, n_boot=0)
    out["random"]["chance"] = random_draws(lambda v: relation_level(rows, names, v, **quick),
                                           len(names), d_model, seed=seed)["all"]
    return out


def _passing_level(passing: Sequence[str], *, rows, names, vectors: dict[str, Tensor],
                   stats, d_model, seed) -> dict:
    """The relation level restricted to the passing relations (rows and vectors alike)."""
    keep = set(passing)
    sub = [r for r in rows if r.relation1 in keep and r.relation2 in keep]
    idx = [names.index(n) for n in passing]
    try:
        return _relation_levels(sub, list(passing), {k: v[idx] for k, v in vectors.items()},
                                stats, d_model, seed)
    except ValueError as e:  # too few rated pairs among the passing relations
        return {"skipped": str(e)}


def run_similarity(model: Model, rows: Sequence[Rating], *, layer: int | None = None,
                   n_relations: int | None = None, max_rows: int | None = 1500,
                   finetune_cfg=None, candidates: str | Sequence[dict] = "default",
                   pass_ratio: float = DEFAULT_PASS_RATIO, metric: str = "top1",
                   icl_shots: int = 5,
                   n_perm: int = 1000, n_boot: int = 1000, seed: int = 0,
                   progress: bool = True) -> tuple[dict, dict]:
    """Relation- and pair-level alignment for every representation and baseline.

    Args:
        rows: the ratings.
        layer: residual layer of the baselines and of the pair level (default: the layer
            chosen for the fine-tuned vectors, else ``n_layers // 3``).
        n_relations: seeded subset of relation subtypes (None = all); rows of the pair level
            are restricted to these relations too.
        max_rows: seeded subset of rows for the pair level (None or 0 = all).
        finetune_cfg: ``FinetuneConfig`` of the per-relation fine-tuned FVs; None skips them.
        candidates: their layer candidates (``fvlens.relational.bank.parse_candidates``);
            one is chosen for all relations on validation.
        pass_ratio: the quality threshold (validation top-1 ≥ ratio × ICL top-1, and > 0).
        metric: "top1" or "top5" (what the threshold compares, ``VectorQuality``).
        icl_shots: demonstrations of the ``icl_mean`` relation vectors.

    Returns:
        ``(results, figures)``: results has ``relation_level`` (all relations),
        ``relation_level_passing`` (the relations whose vector passes under ``metric``),
        ``quality``, ``by_metric`` (for each pass metric, top-1 and first-token top-5: how
        many pass and the relation level on those) and ``pair_level``; figures are plotly
        scatters by name.
    """
    rel = relation_pairs(rows)
    names = sorted(rel)
    if n_relations is not None and n_relations < len(names):
        names = sorted(random.Random(seed).sample(names, n_relations))
    keep = set(names)
    rows = [r for r in rows if r.relation1 in keep and r.relation2 in keep]
    rel = {n: rel[n] for n in names}
    fitted = None
    if finetune_cfg is not None:
        from fvlens.relational.bank import fit_relations

        fitted = fit_relations(model, [relation_task(n, rel[n]) for n in names], finetune_cfg,
                               candidates=candidates, common_layer=True, pass_ratio=pass_ratio,
                               metric=metric, progress=progress)
    if layer is None:
        layer = (fitted[0].result.vector.layer if fitted else
                 getattr(finetune_cfg, "layer", None))
        layer = model.cfg.n_layers // 3 if layer is None else layer
    stats = dict(n_perm=n_perm, n_boot=n_boot, seed=seed)
    relation_vectors: dict[str, Tensor] = {
        "icl_mean": icl_mean_vectors(model, rel, layer=layer, shots=icl_shots, seed=seed),
        "unembed_diff": torch.stack([unembed_difference(model, rel[n]).mean(0) for n in names]),
        "random": random_vectors(len(names), model.cfg.d_model, seed=seed),
    }
    results: dict = {"layer": layer, "relations": names, "n_rows": len(rows)}
    if fitted:
        relation_vectors["finetuned"] = torch.stack([f.result.vector.vector for f in fitted])
        results["quality"] = summarize([f.quality for f in fitted])
        results["finetune"] = {f.quality.name: {"candidates": f.candidates,
                                                "best_step": f.result.best_step,
                                                "lr": f.result.lr} for f in fitted}
    results["relation_level"] = _relation_levels(rows, names, relation_vectors, stats,
                                                  model.cfg.d_model, seed)
    if fitted:
        level = dict(rows=rows, names=names, vectors=relation_vectors, stats=stats,
                     d_model=model.cfg.d_model, seed=seed)
        results["relation_level_passing"] = _passing_level(results["quality"]["passing"],
                                                           **level)
        results["by_metric"] = {}
        for m in METRICS:  # the same vectors under each pass rule, the chosen one included
            q = summarize([dataclasses.replace(f.quality, metric=m) for f in fitted])
            results["by_metric"][m] = {
                "n": q["n"], "n_pass": q["n_pass"], "passing": q["passing"],
                "failing": q["failing"],
                "relation_level_passing": (results["relation_level_passing"] if m == metric
                                           else _passing_level(q["passing"], **level))}

    pair_rows = list(rows)
    if max_rows and len(pair_rows) > max_rows:
        pair_rows = random.Random(seed).sample(pair_rows, max_rows)
    pairs = list(dict.fromkeys(
        [Pair(input=r.pair1[0], output=r.pair1[1]) for r in pair_rows]
        + [Pair(input=r.pair2[0], output=r.pair2[1]) for r in pair_rows]))
    pair_vectors = {
        "resid": pair_representations(model, pairs, layer=layer),
        "unembed_diff": unembed_difference(model, pairs),
        "random": random_vectors(len(pairs), model.cfg.d_model, seed=seed),
    }
    figs = {}
    results["pair_level"] = {}
    quick = dict(n_perm=0, n_boot=0)
    for rep, v in pair_vectors.items():
        res = pair_level(pair_rows, pairs, v, **stats)
        cos = res.pop("cosine")
        results["pair_level"][rep] = res
        if rep == "random":
            res["chance"] = random_draws(
                lambda v: pair_level(pair_rows, pairs, v, **quick), len(pairs),
                model.cfg.d_model, seed=seed)
        if rep == "resid":
            figs["pair_level_scatter"] = scatter(
                pair_rows, cos, title=f"pair level: residual at layer {layer} vs human rating")
    results["n_pair_rows"] = len(pair_rows)
    results["n_pairs"] = len(pairs)
    figs["relation_level_scatter"] = _relation_figure(results)
    return results, figs


def _relation_figure(results: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    for level in ("relation_level", "relation_level_passing"):
        for rep, r in results.get(level, {}).items():
            if not isinstance(r, dict) or "items" not in r:
                continue
            suffix = " (passing)" if level.endswith("passing") else ""
            fig.add_trace(go.Scatter(x=[i["cosine"] for i in r["items"]],
                                     y=[i["rating"] for i in r["items"]], mode="markers",
                                     name=rep + suffix,
                                     text=[":".join(i["relations"]) for i in r["items"]]))
    fig.update_layout(title="relation level: cosine of relation vectors vs mean rating",
                      xaxis_title="cosine", yaxis_title="mean human rating")
    return fig
