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

import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens import HookedTransformer

from fvlens.analyses.depth import (DEFAULT_SCALES, TaskVector, best_layer,
                                   best_layer_and_scale, layer_sweep,
                                   residual_cache, scale_sweep)
from fvlens.evaluate import evaluate
from fvlens.heads.scores import HeadScores
from fvlens.hooks import frozen_parameters, hook_name
from fvlens.prompts import PromptBatch, icl_prompts, zero_shot_prompts
from fvlens.steering import FunctionVector
from fvlens.tasks import Pair, Task, load_task

__all__ = ["STRATEGIES", "StrategyConfig", "Contrast", "paired_icl_prompts", "contrast_pass",
           "mean_difference", "pca_direction", "gradient_scores", "build_strategies",
           "cosine_matrix", "run_strategies", "extract_vector", "CHEAP_STRATEGIES",
           "concat_batches", "cosine_heatmap",
           "strategy_bars"]

STRATEGIES = ("fv_aie", "fv_attnlrp", "fv_gradient", "mean_diff", "pca", "mean_diff_zs",
              "pca_zs")
DEFAULT_STRATEGIES = ("fv_aie", "mean_diff", "pca", "fv_gradient", "mean_diff_zs", "pca_zs")
BASELINES = ("shuffled", "zero_shot")


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


# --- paired prompts and the contrast pass ------------------------------------------------


def concat_batches(batches: Sequence[PromptBatch]) -> PromptBatch:
    """One left-padded batch with the rows of ``batches`` in order (same kind and pad id)."""
    if not batches:
        raise ValueError("concat_batches needs at least one batch")
    rows = []
    for b in batches:
        for i in range(len(b)):
            pad = int(b.n_pad[i])
            rows.append((b.tokens[i, pad:], int(b.targets[i]), b.texts[i], b.queries[i],
                         tuple(p - pad for p in b.frame_positions[i]),
                         tuple(p - pad for p in b.context_positions[i])))
    width = max(len(r[0]) for r in rows)
    tokens = torch.full((len(rows), width), batches[0].pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    frames, contexts = [], []
    for i, (tok, *_rest, frame, context) in enumerate(rows):
        pad = width - len(tok)
        tokens[i, pad:], mask[i, pad:] = tok, 1
        frames.append(tuple(p + pad for p in frame))
        contexts.append(tuple(p + pad for p in context))
    return PromptBatch(tokens=tokens, attention_mask=mask,
                       targets=torch.tensor([r[1] for r in rows], dtype=torch.long),
                       texts=tuple(r[2] for r in rows), queries=tuple(r[3] for r in rows),
                       frame_positions=tuple(frames), context_positions=tuple(contexts),
                       kind=batches[0].kind, pad_id=batches[0].pad_id)


def paired_icl_prompts(model: HookedTransformer, queries: Sequence[Pair],
                       demonstrations: Task | Sequence[Pair], *, shots: int = 10, seed: int = 0
                       ) -> tuple[PromptBatch, PromptBatch]:
    """Clean and shuffled-label ICL prompts whose row i shares query and demonstrations."""
    clean, corrupted = [], []
    for i, q in enumerate(queries):
        clean.append(icl_prompts(model, [q], demonstrations, shots=shots, seed=seed + i))
        corrupted.append(icl_prompts(model, [q], demonstrations, shots=shots, seed=seed + i,
                                     shuffle_labels=True))
    return concat_batches(clean), concat_batches(corrupted)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Contrast:
    """Last-token activations of paired clean/corrupted prompts (and gradients on the latter).

    Attributes:
        clean_resid: ``hook_resid_post`` of every layer at the last token, clean prompts.
        corrupted_resid: the same on the corrupted prompts.
        clean_correct: whether the clean prompt's top-1 is its target.
        z_clean: every head's ``hook_z`` at the last token, clean prompts.
        z_corrupted: every head's ``hook_z`` at the last token, corrupted prompts.
        grad_z: ∂P(target)/∂``hook_z`` at the last token, corrupted prompts.
        zero_shot_resid: ``hook_resid_post`` at the last token of the zero-shot prompts of the
            same queries (None when not run).
    """

    clean_resid: Float[Tensor, "n n_layers d_model"]
    corrupted_resid: Float[Tensor, "n n_layers d_model"]
    clean_correct: Bool[Tensor, " n"]
    z_clean: Float[Tensor, "n n_layers n_heads d_head"]
    z_corrupted: Float[Tensor, "n n_layers n_heads d_head"]
    grad_z: Float[Tensor, "n n_layers n_heads d_head"]
    zero_shot_resid: Float[Tensor, "n n_layers d_model"] | None = None

    def __post_init__(self) -> None:
        n = self.clean_resid.shape[0]
        for name in ("corrupted_resid", "clean_correct", "z_clean", "z_corrupted", "grad_z"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"Contrast.{name} has {getattr(self, name).shape[0]} rows, "
                                 f"clean_resid {n}")
        if self.zero_shot_resid is not None and self.zero_shot_resid.shape[0] != n:
            raise ValueError(f"Contrast.zero_shot_resid has {self.zero_shot_resid.shape[0]} "
                             f"rows, clean_resid {n}")

    def mean_z(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        """Mean head activations over the correctly answered clean prompts (Todd et al.)."""
        if not self.clean_correct.any():
            raise ValueError("the model answers none of the clean prompts correctly: no mean "
                             "activation; use more shots or another task")
        return self.z_clean[self.clean_correct].mean(0)

    def differences(self, baseline: str = "shuffled") -> Float[Tensor, "n n_layers d_model"]:
        """Per-prompt clean − baseline residuals ("shuffled" or "zero_shot" baseline)."""
        if baseline == "shuffled":
            return self.clean_resid - self.corrupted_resid
        if baseline != "zero_shot":
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if self.zero_shot_resid is None:
            raise ValueError("this Contrast has no zero-shot residuals; pass zero_shot=… to "
                             "contrast_pass")
        return self.clean_resid - self.zero_shot_resid


def _last_position_pass(model: HookedTransformer, batch: PromptBatch, *, grad: bool
                        ) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """resid_post and z of every layer at the last token, P(target), and ∂P/∂z if ``grad``."""
    n_layers = model.cfg.n_layers
    resid: list[Tensor | None] = [None] * n_layers
    zs: list[Tensor | None] = [None] * n_layers

    def grab_resid(x: Tensor, hook) -> None:
        resid[hook.layer()] = x[:, -1].detach().float().cpu()

    def grab_z(z: Tensor, hook) -> None:
        zs[hook.layer()] = z

    def leaf(x: Tensor, hook) -> Tensor:
        return x.detach().requires_grad_(True)

    hooks = [(hook_name("resid_post", layer), grab_resid) for layer in range(n_layers)]
    hooks += [(hook_name("z", layer), grab_z) for layer in range(n_layers)]
    if grad:
        hooks = [("hook_embed", leaf)] + hooks
    device = model.cfg.device
    with frozen_parameters(model), torch.set_grad_enabled(grad), model.hooks(fwd_hooks=hooks):
        x = model(batch.tokens.to(device), attention_mask=batch.attention_mask.to(device),
                  stop_at_layer=n_layers)[:, -1]
        if model.cfg.normalization_type is not None:
            x = model.ln_final(x)
        logits = model.unembed(x[:, None])[:, 0]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        probs = logits.softmax(-1).gather(1, batch.targets.to(logits.device)[:, None])[:, 0]
        grads = None
        if grad:
            full = torch.autograd.grad(probs.sum(), zs)  # type: ignore[arg-type]
            grads = torch.stack([g[:, -1].float().cpu() for g in full], dim=1)
    z_last = torch.stack([z[:, -1].detach().float().cpu() for z in zs], dim=1)  # type: ignore
    correct = logits.detach().argmax(-1).cpu() == batch.targets
    return torch.stack(resid, dim=1), z_last, grads, probs.detach().cpu(), correct  # type: ignore


def contrast_pass(model: HookedTransformer, clean: PromptBatch, corrupted: PromptBatch, *,
                  zero_shot: PromptBatch | None = None, batch_size: int = 8) -> Contrast:
    """Residuals of paired prompts; on the corrupted ones also z and ∂P(target)/∂z.

    Args:
        clean: clean ICL prompts.
        corrupted: their shuffled-label twins, row for row (``paired_icl_prompts``).
        zero_shot: optionally the zero-shot prompts of the same queries, row for row.
        batch_size: rows per pass (rows are independent, so one backward of the summed
            probabilities gives every row's own gradient).
    """
    if len(clean) != len(corrupted) or (zero_shot is not None and len(zero_shot) != len(clean)):
        raise ValueError(f"{len(clean)} clean but {len(corrupted)} corrupted prompts; pair "
                         "them with paired_icl_prompts")
    c_resid, c_z, c_correct, x_resid, x_z, x_grad = [], [], [], [], [], []
    for chunk in clean.chunks(batch_size):
        resid, z, _, _, correct = _last_position_pass(model, chunk, grad=False)
        c_resid.append(resid)
        c_z.append(z)
        c_correct.append(correct)
    for chunk in corrupted.chunks(batch_size):
        resid, z, grads, _, _ = _last_position_pass(model, chunk, grad=True)
        x_resid.append(resid)
        x_z.append(z)
        x_grad.append(grads)
    z_resid = None
    if zero_shot is not None:
        z_resid = torch.cat([_last_position_pass(model, chunk, grad=False)[0]
                             for chunk in zero_shot.chunks(batch_size)])
    return Contrast(clean_resid=torch.cat(c_resid), corrupted_resid=torch.cat(x_resid),
                    zero_shot_resid=z_resid,
                    clean_correct=torch.cat(c_correct), z_clean=torch.cat(c_z),
                    z_corrupted=torch.cat(x_z),
                    grad_z=torch.cat(x_grad))


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
    """Attribution-patching head scores: a first-order AIE, ``HeadScores(method="gradient")``.

    score(L,h) = mean_i Σ_d (mean_z[L,h,d] − z_corr[i,L,h,d]) · ∂P_i(target)/∂z[i,L,h,d],
    the linear estimate of the rise in P(target) when head h's last-token output is patched
    with its clean mean (Todd et al.'s indirect effect), all heads from one backward pass.
    """
    delta = mean_z.float()[None] - contrast.z_corrupted
    scores = (delta * contrast.grad_z).sum(-1).mean(0)
    return HeadScores(scores=scores, method="gradient", tasks=(task,), prompt_mode="icl",
                      n_samples=int(contrast.z_corrupted.shape[0]),
                      meta={"estimate": "attribution patching, dP(target)/dz"})


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
    from fvlens.pipeline import RunConfig, prepare_task, score_task

    task = task if isinstance(task, Task) else load_task(task)
    t0 = time.perf_counter()
    methods = [s.removeprefix("fv_") for s in cfg.strategies if s in ("fv_aie", "fv_attnlrp")]
    rc = RunConfig(tasks=(task.name,), select=tuple(methods) or ("aie",), k=cfg.k,
                   shots=cfg.shots, n_mean=cfg.n_mean, n_samples=cfg.n_samples,
                   n_val=cfg.n_val, n_test=cfg.n_test, seed=cfg.seed)
    data = prepare_task(model, task, rc)
    scores = {m: score_task(model, data, m, rc, progress=progress) for m in methods}
    train, _ = task.split(test_fraction=rc.test_fraction, seed=rc.seed)
    clean, corrupted = paired_icl_prompts(model, data.mean_queries, train, shots=cfg.shots,
                                          seed=cfg.seed + 7)
    zs = (zero_shot_prompts(model, data.mean_queries)
          if any(s.endswith("_zs") for s in cfg.strategies) else None)
    contrast = contrast_pass(model, clean, corrupted, zero_shot=zs)
    scores["gradient"] = gradient_scores(contrast, data.mean_z, task=task.name)
    vectors = build_strategies(model, contrast=contrast, mean_z=data.mean_z,
                               head_scores=scores, strategies=cfg.strategies, k=cfg.k)

    val = zero_shot_prompts(model, data.val_queries or data.mean_queries)
    ref = evaluate(model, icl_prompts(model, data.test_queries, train, shots=cfg.shots,
                                      seed=cfg.seed))
    keep = ref.correct.nonzero()[:, 0].tolist()
    rec: dict[str, Any] = {
        "n_val": len(val), "n_test": len(data.test_queries), "n": len(keep),
        "icl_top1": ref.top1, "mean_activation_accuracy": data.clean_accuracy,
        "contrast_pairs": len(clean), "contrast_clean_correct": int(contrast.clean_correct.sum()),
        "zero_shot_val_top1": evaluate(model, val).top1, "strategies": {}, "heads": {}}
    if not keep:
        rec["skipped"] = "the ICL prompt answers no test query correctly"
        return rec, vectors
    test = zero_shot_prompts(model, [data.test_queries[i] for i in keep])
    rec["zero_shot_top1"] = evaluate(model, test).top1
    val_cache = residual_cache(model, val)
    test_cache = residual_cache(model, test)
    best: dict[str, int] = {}
    for name, tv in vectors.items():
        sweep = layer_sweep(model, tv, val, cache=val_cache)
        layer = best[name] = best_layer(sweep)
        ev = evaluate(model, test, fwd_hooks=tv.hooks(layer))
        out = {"best_layer": layer, "val_top1": sweep[layer].top1, "test_top1": ev.top1,
               "test_top3": ev.top3, "test_mean_rank": float(ev.ranks.float().mean()),
               "norm": float(tv.vectors[layer].norm()),
               "layer_sweep_val": {str(k): v.top1 for k, v in sweep.items()}}
        if cfg.test_sweep:
            out["layer_sweep_test"] = {str(k): v.top1 for k, v in
                                       layer_sweep(model, tv, test, cache=test_cache).items()}
        out["scale_sweep"] = {str(s): v.top1 for s, v in
                              scale_sweep(model, tv, test, layer, scales=cfg.scales,
                                          cache=test_cache).items()}
        # A residual-difference vector's norm is not the task signal's (a difference of
        # means cancels the shared part): choose its scale on validation, like the DFV's.
        t_layer, t_scale = best_layer_and_scale(model, tv, val, scales=cfg.scales,
                                                cache=val_cache, sweep_at_1=sweep)
        ev = evaluate(model, test, fwd_hooks=tv.hooks(t_layer, scale=t_scale))
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


CHEAP_STRATEGIES = ("fv_gradient", "mean_diff", "pca", "mean_diff_zs", "pca_zs")


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
    sweep = layer_sweep(model, tv, zero_shot_prompts(model, val_q or mean_q))
    return tv, best_layer(sweep), {layer: ev.top1 for layer, ev in sweep.items()}


# --- figures -----------------------------------------------------------------------------


def cosine_heatmap(record: dict[str, Any], *, key: str = "cosine", title: str = "") -> go.Figure:
    """Heatmap of a task's strategy cosine matrix (``record[key]`` from ``run_strategies``)."""
    cos = record.get(key)
    if not cos or not cos.get("names"):
        raise ValueError(f"record has no {key!r}; pass a task record of `fvlens strategies`")
    names = cos["names"]
    z = cos["matrix"]
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu",
                               text=[[f"{v:.2f}" for v in row] for row in z],
                               texttemplate="%{text}"))
    fig.update_layout(title=title or f"cosine similarity of the strategies' vectors "
                      f"({key})", yaxis=dict(autorange="reversed"))
    return fig


def strategy_bars(results: dict[str, Any]) -> go.Figure:
    """Test top-1 per task: unsteered zero-shot, ICL and each strategy at its best layer."""
    tasks = results.get("tasks") or {}
    series: dict[str, dict[str, float]] = {"zero-shot": {}, "ICL": {}}
    for t, rec in tasks.items():
        if "zero_shot_top1" in rec:
            series["zero-shot"][t] = rec["zero_shot_top1"]
            series["ICL"][t] = rec["icl_top1"]
        for name, s in (rec.get("strategies") or {}).items():
            series.setdefault(f"{name}", {})[t] = s["test_top1"]
    if not any(series.values()):
        raise ValueError("nothing to plot: no task in the results has test accuracies")
    fig = go.Figure([go.Bar(name=label, x=list(v), y=list(v.values()))
                     for label, v in series.items() if v])
    fig.update_layout(barmode="group", title="zero-shot top-1 at the best layer (test)",
                      yaxis=dict(title="top-1", range=[0, 1.02]))
    return fig
