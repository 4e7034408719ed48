"""Ways to extract a task vector, compared on the same zero-shot test.

- ``fv_aie`` / ``fv_attnlrp``: the head FV of Todd et al. (heads by AIE or AttnLRP, via
  ``fvlens.pipeline``), one vector offered at every layer.
- ``mean_diff``: per layer, mean ``hook_resid_post`` at the last token over clean ICL prompts
  minus over their corrupted (shuffled-label) twins.
- ``pca``: per layer, the first principal direction of the per-prompt clean − corrupted
  differences (centred), sign agreeing with the mean difference, scaled to its norm.
- ``mean_diff_zs`` / ``pca_zs``: the same with the zero-shot prompt of the same query as the
  baseline instead of the shuffled-label prompt (what the demonstrations add, labels included).
- ``fv_gradient``: the head FV with heads ranked by attribution patching, a first-order
  estimate of the AIE (Nanda 2023; Syed et al. 2023): score(L,h) = mean over corrupted
  prompts of (mean_z[L,h] − z_corr[L,h]) · ∂P(target)/∂z[L,h] at the last position — one
  forward and one backward pass per prompt instead of one patched run per head.

Clean and corrupted prompts are paired: row i of both uses the same query and the same
demonstrations, only the labels are shuffled, so their difference isolates the task.
``run_strategies`` builds every vector of a task, sweeps the injection layer on validation
queries and reports test accuracy (``fvlens strategies``; see ``docs/analyses.md``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from fvlens.analyses.contrast import BASELINES, Contrast, contrast_pass, paired_icl_prompts
from fvlens.analyses.depth import TaskVector
from fvlens.analyses.names import CHEAP_STRATEGIES, DEFAULT_STRATEGIES, STRATEGIES
from fvlens.evaluation import evaluate
from fvlens.heads.gradient import attribution_scores
from fvlens.heads.scores import HeadScores
from fvlens.injection import (DEFAULT_SCALES, best_layer, best_layer_and_scale, layer_sweep,
                              residual_cache, scale_sweep, steered_evaluation)
from fvlens.plan import RunConfig, prepare_task, score_task
from fvlens.prompts import icl_prompts, zero_shot_prompts
from fvlens.steering import FunctionVector
from fvlens.tasks import Task, load_task

__all__ = ["STRATEGIES", "StrategyConfig", "mean_difference", "pca_direction",
           "gradient_scores", "build_strategies", "cosine_matrix", "run_strategies",
           "extract_vector", "CHEAP_STRATEGIES", "BASELINES", "Contrast",
           "contrast_pass", "paired_icl_prompts"]

@dataclasses.dataclass(frozen=True, kw_only=True)
class StrategyConfig:
    """Settings of ``fvlens strategies`` (every field is recorded in the results).

    Attributes:
        strategies: which vectors to build (subset of ``STRATEGIES``).
        k: heads per head FV.
        shots: ICL demonstrations per prompt.
        n_mean: clean prompts for the head FVs' mean activations, and the paired
            clean/corrupted prompts of mean_diff, PCA and the gradient scores.
        n_samples: AIE / AttnLRP head-scoring prompts.
        n_val: validation queries (the layer is chosen on them).
        n_test: test queries (reported only where the ICL prompt answers correctly).
        scales: scales tried at each strategy's best layer, and with every layer for the
            validation-chosen (layer, scale) in ``tuned``.
        test_sweep: also sweep every layer on the test queries (for the depth figure).
        common_layer: layer of the cosine matrix: "fv" (the first head FV's best layer) or
            an int.
        seed: seeds splits, demonstrations and label shuffles.
    """

    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    k: int = 20
    shots: int = 10
    n_mean: int = 20
    n_samples: int = 20
    n_val: int = 20
    n_test: int = 25
    scales: tuple[float, ...] = DEFAULT_SCALES
    test_sweep: bool = True
    common_layer: str | int = "fv"
    seed: int = 0

    def __post_init__(self) -> None:
        bad = set(self.strategies) - set(STRATEGIES)
        if bad or not self.strategies:
            raise ValueError(f"unknown strategies {sorted(bad)}; choose from {STRATEGIES}")
        for name in ("k", "shots", "n_mean", "n_samples", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive numbers, got {self.scales}")
        if self.n_mean < 2 and "pca" in self.strategies:
            raise ValueError("pca needs n_mean ≥ 2 prompt pairs")
        if not (self.common_layer == "fv" or isinstance(self.common_layer, int)):
            raise ValueError(f"common_layer must be 'fv' or a layer index, got "
                             f"{self.common_layer!r}")


# --- the strategies ----------------------------------------------------------------------


def _rows(contrast: Contrast, only_correct: bool, baseline: str) -> Tensor:
    if not only_correct:
        return contrast.differences(baseline)
    if not contrast.clean_correct.any():
        raise ValueError("the model answers none of the clean prompts correctly, so there is "
                         "no task signal to average; use more shots, another task, or "
                         "only_correct=False")
    return contrast.differences(baseline)[contrast.clean_correct]


def mean_difference(contrast: Contrast, *, only_correct: bool = True,
                    baseline: str = "shuffled") -> Float[Tensor, "n_layers d_model"]:
    """Per layer, mean clean − corrupted residual at the last token.

    Args:
        contrast: the paired activations.
        baseline: subtract the shuffled-label prompt ("shuffled") or the zero-shot prompt
            ("zero_shot") of the same query.
        only_correct: use only pairs whose clean prompt the model answers correctly (as the
            head FV's mean activations do).
    """
    return _rows(contrast, only_correct, baseline).mean(0)


def pca_direction(contrast: Contrast, *, only_correct: bool = True, center: bool = True,
                  baseline: str = "shuffled") -> Float[Tensor, "n_layers d_model"]:
    """Per layer, the first principal direction of the per-prompt differences.

    The direction's sign makes its dot product with the mean difference non-negative and its
    norm is the mean difference's norm, so it is injected at the same magnitude.

    Args:
        contrast: the paired activations.
        only_correct, baseline: as in ``mean_difference``.
        center: subtract the mean difference before the SVD (PCA proper); False takes the
            top singular direction of the raw differences.
    """
    diffs = _rows(contrast, only_correct, baseline)  # [n, L, d]
    if diffs.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 prompt pairs, got {diffs.shape[0]}")
    mean = diffs.mean(0)
    out = torch.empty_like(mean)
    for layer in range(diffs.shape[1]):
        x = diffs[:, layer].double()
        if center:
            x = x - x.mean(0)
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        direction = vh[0].float()
        if float(direction @ mean[layer]) < 0:
            direction = -direction
        out[layer] = direction * mean[layer].norm()
    return out


def gradient_scores(contrast: Contrast, mean_z: Float[Tensor, "n_layers n_heads d_head"], *,
                    task: str = "task") -> HeadScores:
    """Attribution-patching head scores of the contrast's corrupted side
    (``fvlens.heads.gradient.attribution_scores``)."""
    return attribution_scores(contrast.z_corrupted, contrast.grad_z, mean_z, task=task)


def build_strategies(model: HookedTransformer, *, contrast: Contrast,
                     mean_z: Float[Tensor, "n_layers n_heads d_head"] | None = None,
                     head_scores: dict[str, HeadScores], strategies: Sequence[str],
                     k: int = 20) -> dict[str, TaskVector]:
    """Every requested ``TaskVector`` from the contrast and the head scores.

    Args:
        contrast: paired activations (mean_diff, pca).
        mean_z: mean head activations over correct clean prompts (head FVs); default
            ``contrast.mean_z()``.
        head_scores: method ("aie", "attnlrp", "gradient") -> scores, for the fv_* strategies.
        strategies: names from ``STRATEGIES``.
        k: heads per head FV.
    """
    n_layers = model.cfg.n_layers
    out: dict[str, TaskVector] = {}
    for name in strategies:
        if name.startswith("fv_"):
            method = name.removeprefix("fv_")
            if method not in head_scores:
                raise ValueError(f"strategy {name} needs head_scores[{method!r}]; have "
                                 f"{sorted(head_scores)}")
            if mean_z is None:
                mean_z = contrast.mean_z()
            fv = FunctionVector.from_heads(model, mean_z, head_scores[method].top_k(k))
            out[name] = TaskVector.constant(name, fv, n_layers)
        elif name in ("mean_diff", "mean_diff_zs", "pca", "pca_zs"):
            baseline = "zero_shot" if name.endswith("_zs") else "shuffled"
            fn = mean_difference if name.startswith("mean_diff") else pca_direction
            out[name] = TaskVector(name=name, vectors=fn(contrast, baseline=baseline),
                                   per_layer=True)
        else:
            raise ValueError(f"unknown strategy {name!r}; choose from {STRATEGIES}")
    return out


def cosine_matrix(vectors: dict[str, TaskVector], layers: dict[str, int] | int
                  ) -> dict[str, Any]:
    """Cosine similarity between strategies' vectors.

    Args:
        vectors: strategy -> TaskVector.
        layers: one layer for all, or strategy -> its layer (e.g. each one's best layer).

    Returns:
        ``{"names": [...], "layers": {...}, "matrix": [[...]]}``.
    """
    names = list(vectors)
    at = {n: layers if isinstance(layers, int) else layers[n] for n in names}
    vs = torch.stack([vectors[n].vectors[at[n]] for n in names]).double()
    vs = vs / vs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return {"names": names, "layers": at, "matrix": (vs @ vs.T).tolist()}


# --- the analysis ------------------------------------------------------------------------


def _spearman(a: HeadScores, b: HeadScores) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.scores.flatten().numpy(), b.scores.flatten().numpy()).statistic)


def run_strategies(model: HookedTransformer, task: str | Task,
                   cfg: StrategyConfig = StrategyConfig(), *, progress: bool = False
                   ) -> tuple[dict[str, Any], dict[str, TaskVector]]:
    """Build every strategy's vector for one task and measure it.

    Layers are swept on zero-shot validation queries (the best layer has the best top-1,
    ties by mean rank); the reported accuracy is the best layer's top-1 on test queries the
    ICL prompt answers correctly. Each vector is also tried at ``cfg.scales`` at its best
    layer (test queries).

    Returns:
        ``(record, vectors)``: the task's JSON record and its ``TaskVector`` per strategy.
    """
    task = task if isinstance(task, Task) else load_task(task)
    t0 = time.perf_counter()
    methods = [s.removeprefix("fv_") for s in cfg.strategies if s in ("fv_aie", "fv_attnlrp")]
    rc = RunConfig(tasks=(task.name,), select=tuple(methods) or ("aie",), k=cfg.k,
                   shots=cfg.shots, n_mean=cfg.n_mean, n_samples=cfg.n_samples,
                   n_val=cfg.n_val, n_test=cfg.n_test, seed=cfg.seed)
    plan = prepare_task(model, task, rc)
    scores = {m: score_task(model, plan, m, rc, progress=progress) for m in methods}
    clean, corrupted = paired_icl_prompts(model, plan.mean_queries, plan.train, shots=cfg.shots,
                                          seed=cfg.seed + 7)
    zs = (zero_shot_prompts(model, plan.mean_queries)
          if any(s.endswith("_zs") for s in cfg.strategies) else None)
    contrast = contrast_pass(model, clean, corrupted, zero_shot=zs)
    scores["gradient"] = gradient_scores(contrast, plan.mean_z, task=task.name)
    vectors = build_strategies(model, contrast=contrast, mean_z=plan.mean_z,
                               head_scores=scores, strategies=cfg.strategies, k=cfg.k)

    val, val_cache = plan.val, plan.val_cache
    ref = evaluate(model, icl_prompts(model, plan.test_queries, plan.train, shots=cfg.shots,
                                      seed=cfg.seed))
    keep = ref.correct.nonzero()[:, 0].tolist()
    rec: dict[str, Any] = {
        "n_val": len(val), "n_test": len(plan.test_queries), "n": len(keep),
        "icl_top1": ref.top1, "mean_activation_accuracy": plan.clean_accuracy,
        "contrast_pairs": len(clean), "contrast_clean_correct": int(contrast.clean_correct.sum()),
        "zero_shot_val_top1": val_cache.unsteered.top1, "strategies": {}, "heads": {}}
    if not keep:
        rec["skipped"] = "the ICL prompt answers no test query correctly"
        return rec, vectors
    test = zero_shot_prompts(model, [plan.test_queries[i] for i in keep])
    test_cache = residual_cache(model, test)
    rec["zero_shot_top1"] = test_cache.unsteered.top1
    best: dict[str, int] = {}
    for name, tv in vectors.items():
        sweep = layer_sweep(model, val, tv.vectors, cache=val_cache)
        layer = best[name] = best_layer(sweep)
        ev = steered_evaluation(model, test_cache, start=layer + 1, vector=tv.vectors[layer])
        out = {"best_layer": layer, "val_top1": sweep[layer].top1, "test_top1": ev.top1,
               "test_top3": ev.top3, "test_mean_rank": float(ev.ranks.float().mean()),
               "norm": float(tv.vectors[layer].norm()),
               "layer_sweep_val": {str(k): v.top1 for k, v in sweep.items()}}
        if cfg.test_sweep:
            out["layer_sweep_test"] = {str(k): v.top1 for k, v in
                                       layer_sweep(model, test, tv.vectors,
                                                   cache=test_cache).items()}
        out["scale_sweep"] = {str(s): v.top1 for s, v in
                              scale_sweep(model, test, tv.vectors, layer, scales=cfg.scales,
                                          cache=test_cache).items()}
        # A residual-difference vector's norm is not the task signal's (a difference of
        # means cancels the shared part): choose its scale on validation, like the DFV's.
        t_layer, t_scale = best_layer_and_scale(model, val, tv.vectors, scales=cfg.scales,
                                                cache=val_cache, sweep_at_1=sweep)
        ev = steered_evaluation(model, test_cache, start=t_layer + 1,
                                vector=t_scale * tv.vectors[t_layer])
        out["tuned"] = {"layer": t_layer, "scale": t_scale, "test_top1": ev.top1,
                        "test_top3": ev.top3}
        rec["strategies"][name] = out
        if tv.heads:
            rec["heads"][name] = [list(h) for h in tv.heads]
    fv_names = [n for n in vectors if n.startswith("fv_")]
    if cfg.common_layer == "fv":
        common = best[fv_names[0]] if fv_names else best[next(iter(best))]
    else:
        common = int(cfg.common_layer)
    rec["cosine"] = cosine_matrix(vectors, common)
    rec["cosine_at_best"] = cosine_matrix(vectors, best)
    if "aie" in scores:
        rec["gradient_vs_aie"] = {"spearman": _spearman(scores["gradient"], scores["aie"]),
                                  "top_k_overlap": scores["gradient"].overlap(
                                      scores["aie"], cfg.k)["jaccard"]}
    rec["head_scores"] = {m: s.to_json() for m, s in scores.items()}
    rec["seconds"] = time.perf_counter() - t0
    return rec, vectors


def extract_vector(model: HookedTransformer, task: str | Task, strategy: str = "mean_diff", *,
                   n_pairs: int = 16, n_val: int = 15, shots: int = 10, k: int = 20,
                   seed: int = 0, test_fraction: float = 0.3
                   ) -> tuple[TaskVector, int, dict[int, float]]:
    """One strategy's vector from one contrast pass (no AIE), its layer chosen on validation.

    Args:
        task: task name, path or Task; its train split gives the prompts.
        strategy: one of ``CHEAP_STRATEGIES``; fv_gradient's mean activations are the clean
            half of the contrast.
        n_pairs: paired clean/corrupted ICL prompts.
        n_val: zero-shot validation queries for the layer sweep.

    Returns:
        ``(vector, best_layer, {layer: validation top-1})``.
    """
    if strategy not in CHEAP_STRATEGIES:
        raise ValueError(f"extract_vector builds {CHEAP_STRATEGIES}; for {strategy!r} use "
                         "run_strategies (it scores heads by AIE/AttnLRP)")
    task = task if isinstance(task, Task) else load_task(task)
    train, _ = task.split(test_fraction=test_fraction, seed=seed)
    pairs = list(train.sample(len(train), seed=seed).pairs)
    if len(pairs) < n_pairs + 1:
        raise ValueError(f"task {task.name!r} has {len(pairs)} training pairs; lower n_pairs")
    mean_q, val_q = pairs[:n_pairs], pairs[n_pairs:n_pairs + n_val]
    clean, corrupted = paired_icl_prompts(model, mean_q, train, shots=shots, seed=seed + 7)
    zs = zero_shot_prompts(model, mean_q) if strategy.endswith("_zs") else None
    contrast = contrast_pass(model, clean, corrupted, zero_shot=zs)
    scores = ({"gradient": gradient_scores(contrast, contrast.mean_z(), task=task.name)}
              if strategy == "fv_gradient" else {})
    tv = build_strategies(model, contrast=contrast, head_scores=scores, strategies=(strategy,),
                          k=k)[strategy]
    sweep = layer_sweep(model, zero_shot_prompts(model, val_q or mean_q), tv.vectors)
    return tv, best_layer(sweep), {layer: ev.top1 for layer, ev in sweep.items()}
