"""Injection depth: how a task vector's zero-shot accuracy depends on the layer and the scale.

A ``TaskVector`` holds one ``[d_model]`` vector per layer (a head FV repeats its single
vector; mean-difference and PCA vectors differ per layer) and turns into the same hook list
as ``FunctionVector``: ``scale * v[L]`` added to ``blocks.{L}.hook_resid_post`` at the last
position.

Sweeping all layers by re-running the model once per layer costs ``n_layers`` forward passes.
``layer_sweep`` runs the batch once, keeps every layer's residual stream, and for layer L
resumes the forward pass at block L+1 from ``resid_post[L] + v[L]`` (TransformerLens
``start_at_layer``); the result equals ``evaluate(model, batch, fwd_hooks=tv.hooks(L))``
(tested) at about half the cost. Unlike ``fvlens.evaluate.layer_sweep`` (one vector) it takes a
vector per layer and shares one ``ResidualCache`` across every strategy's sweeps.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.colors import qualitative
from torch import Tensor
from transformer_lens import HookedTransformer

from fvlens.evaluate import (Evaluation, auto_batch_size, evaluation_from_logits,
                             resume_with_vector)
from fvlens.heads.scores import Head
from fvlens.hooks import HookList, hook_name
from fvlens.prompts import PromptBatch
from fvlens.steering import FunctionVector

__all__ = ["TaskVector", "ResidualCache", "residual_cache", "layer_sweep", "scale_sweep",
           "best_layer", "best_layer_and_scale", "depth_summary", "layer_curves", "scale_curves"]

DEFAULT_SCALES = (0.5, 1.0, 2.0, 4.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskVector:
    """A task vector per injection layer, built by one extraction strategy.

    Attributes:
        name: the strategy ("fv_aie", "mean_diff", "pca", "fv_gradient", …).
        vectors: ``[n_layers, d_model]``; row L is added at ``blocks.L.hook_resid_post``.
        per_layer: False when every row is the same vector (a head FV).
        heads: the heads a head-based vector was built from.
    """

    name: str
    vectors: Float[Tensor, "n_layers d_model"]
    per_layer: bool
    heads: tuple[Head, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("TaskVector.name must name the strategy, e.g. 'mean_diff'")
        if self.vectors.ndim != 2:
            raise ValueError(f"TaskVector.vectors must be [n_layers, d_model], got shape "
                             f"{tuple(self.vectors.shape)}")
        if not bool(torch.isfinite(self.vectors).all()):
            raise ValueError(f"TaskVector {self.name!r} has non-finite values; rebuild it")

    @classmethod
    def constant(cls, name: str, fv: FunctionVector, n_layers: int) -> TaskVector:
        """A head FV: the same vector offered at every layer."""
        return cls(name=name, vectors=fv.vector.float().expand(n_layers, -1).clone(),
                   per_layer=False, heads=fv.heads)

    @property
    def n_layers(self) -> int:
        return self.vectors.shape[0]

    def _check(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} out of range: {self.name} has vectors for layers "
                             f"0..{self.n_layers - 1}")

    def at(self, layer: int) -> FunctionVector:
        """The vector of ``layer`` as a ``FunctionVector`` with that default layer."""
        self._check(layer)
        return FunctionVector(vector=self.vectors[layer].clone(), heads=self.heads, layer=layer)

    def hooks(self, layer: int, *, scale: float = 1.0) -> HookList:
        """Hook list adding ``scale * vectors[layer]`` at the last position of that layer."""
        return self.at(layer).hooks(scale=scale)


# --- residual cache and the fast sweep ---------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResidualCache:
    """Every layer's ``hook_resid_post`` of a batch, per chunk of rows (unsteered run)."""

    batch: PromptBatch
    chunks: tuple[PromptBatch, ...]
    resid: tuple[Tensor, ...]  # per chunk: [n_layers, rows, pos, d_model]


@torch.no_grad()
def residual_cache(model: HookedTransformer, batch: PromptBatch, *,
                   batch_size: int | None = None) -> ResidualCache:
    """Run ``batch`` once and keep the residual stream after every block.

    Args:
        batch_size: rows per pass; None sizes passes by tokens (``fvlens.evaluate``).
    """
    n_layers = model.cfg.n_layers
    chunks, resid = batch.chunks(auto_batch_size(batch, batch_size)), []
    for chunk in chunks:
        store: list[Tensor | None] = [None] * n_layers

        def grab(x: Tensor, hook, *, _store=store) -> None:
            _store[hook.layer()] = x.detach().clone()

        hooks = [(hook_name("resid_post", layer), grab) for layer in range(n_layers)]
        with model.hooks(fwd_hooks=hooks):
            model(chunk.tokens.to(model.cfg.device),
                  attention_mask=chunk.attention_mask.to(model.cfg.device),
                  stop_at_layer=n_layers)
        resid.append(torch.stack(store))  # type: ignore[arg-type]
    return ResidualCache(batch=batch, chunks=tuple(chunks), resid=tuple(resid))


@torch.no_grad()
def _steered_from_cache(model: HookedTransformer, cache: ResidualCache, layer: int,
                        vector: Tensor) -> Evaluation:
    logits = [resume_with_vector(model, resid[layer], layer, vector, chunk.attention_mask)
              for chunk, resid in zip(cache.chunks, cache.resid)]
    return evaluation_from_logits(torch.cat(logits), cache.batch.targets)


def layer_sweep(model: HookedTransformer, vector: TaskVector, batch: PromptBatch, *,
                layers: Sequence[int] | None = None, scale: float = 1.0,
                cache: ResidualCache | None = None) -> dict[int, Evaluation]:
    """Zero-shot evaluation with ``vector`` injected at each layer.

    Args:
        vector: the task vector (row L injected at layer L).
        batch: the prompts (usually zero-shot).
        layers: layers to try; default all.
        scale: multiplier of the vector.
        cache: a ``residual_cache`` of ``batch`` to reuse across vectors.

    Returns:
        ``{layer: Evaluation}``, equal to ``evaluate(model, batch, fwd_hooks=vector.hooks(L))``.
    """
    if vector.n_layers != model.cfg.n_layers:
        raise ValueError(f"{vector.name} has {vector.n_layers} layers, the model "
                         f"{model.cfg.n_layers}; build the vector on this model")
    if cache is None:
        cache = residual_cache(model, batch)
    elif cache.batch is not batch:
        raise ValueError("cache was built for another batch; pass residual_cache(model, batch)")
    layers = range(model.cfg.n_layers) if layers is None else layers
    out = {}
    for layer in layers:
        vector._check(layer)
        out[int(layer)] = _steered_from_cache(model, cache, layer, scale * vector.vectors[layer])
    return out


def scale_sweep(model: HookedTransformer, vector: TaskVector, batch: PromptBatch, layer: int,
                *, scales: Sequence[float] = DEFAULT_SCALES,
                cache: ResidualCache | None = None) -> dict[float, Evaluation]:
    """Zero-shot evaluation at one layer for each scale of the vector."""
    if cache is None:
        cache = residual_cache(model, batch)
    vector._check(layer)
    return {float(s): _steered_from_cache(model, cache, layer, s * vector.vectors[layer])
            for s in scales}


def best_layer(sweep: Mapping[int, Evaluation]) -> int:
    """Layer with the best top-1 (ties: lower mean target rank, then the lower layer)."""
    if not sweep:
        raise ValueError("empty layer sweep: evaluate at least one layer")
    return min(sweep, key=lambda layer: (-sweep[layer].top1,
                                         float(sweep[layer].ranks.float().mean()), layer))


def best_layer_and_scale(model: HookedTransformer, vector: TaskVector, batch: PromptBatch, *,
                         scales: Sequence[float] = DEFAULT_SCALES,
                         cache: ResidualCache | None = None,
                         sweep_at_1: Mapping[int, Evaluation] | None = None
                         ) -> tuple[int, float]:
    """Layer and scale with the best top-1 on ``batch`` (usually validation queries).

    Every layer at every scale; ties: lower mean target rank, then the scale nearest 1 (in
    log), then the lower layer. ``sweep_at_1``, a ``layer_sweep`` of the same batch at scale 1,
    saves that pass.
    """
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive numbers, got {tuple(scales)}")
    if cache is None:
        cache = residual_cache(model, batch)
    grid: dict[tuple[int, float], Evaluation] = {}
    for scale in scales:
        sweep = (sweep_at_1 if scale == 1.0 and sweep_at_1 is not None else
                 layer_sweep(model, vector, batch, scale=scale, cache=cache))
        grid.update({(layer, float(scale)): ev for layer, ev in sweep.items()})
    return min(grid, key=lambda ls: (-grid[ls].top1, float(grid[ls].ranks.float().mean()),
                                     abs(math.log(ls[1])), ls[0]))


# --- summaries and figures ---------------------------------------------------------------


def depth_summary(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Best layer as a fraction of depth, per strategy and task, and its spread over tasks.

    The fraction is ``(best_layer + 1) / n_layers``: the share of blocks that have run when
    the vector is added (1.0 = after the last block).

    Args:
        results: the dict ``fvlens strategies`` writes (``tasks[t]["strategies"][s]``).

    Returns:
        ``{strategy: {"per_task": {task: fraction}, "mean", "std", "min", "max"}}``.
    """
    n_layers = results.get("n_layers")
    if not n_layers:
        raise ValueError("results has no 'n_layers'; pass the dict `fvlens strategies` writes")
    out: dict[str, dict[str, Any]] = {}
    for task, rec in results.get("tasks", {}).items():
        for name, s in (rec.get("strategies") or {}).items():
            if "best_layer" in s:
                out.setdefault(name, {"per_task": {}})["per_task"][task] = \
                    (s["best_layer"] + 1) / n_layers
    for s in out.values():
        vals = list(s["per_task"].values())
        s.update(mean=statistics.fmean(vals), std=statistics.pstdev(vals), min=min(vals),
                 max=max(vals))
    return out


def _curves(results: Mapping[str, Any], key: str, task: str | None) -> dict[str, dict]:
    tasks = results.get("tasks") or {}
    if task is not None and task not in tasks:
        raise ValueError(f"task {task!r} is not in the results; it has {sorted(tasks)}")
    curves: dict[str, dict] = {}
    for name, rec in tasks.items():
        if task is not None and name != task:
            continue
        for strategy, s in (rec.get("strategies") or {}).items():
            if s.get(key):
                curves[f"{name} · {strategy}" if task is None else strategy] = s[key]
    if not curves:
        raise ValueError(f"nothing to plot: no strategy in the results has {key!r}")
    return curves


def _line_figure(curves: dict[str, dict], x_title: str, title: str, *, x_log: bool = False,
                 baseline: float | None = None) -> go.Figure:
    fig = go.Figure()
    palette = qualitative.Plotly
    for i, (label, sweep) in enumerate(curves.items()):
        xs = sorted(sweep, key=float)
        fig.add_trace(go.Scatter(x=[float(x) for x in xs], y=[sweep[x] for x in xs],
                                 mode="lines+markers", name=label,
                                 line=dict(color=palette[i % len(palette)])))
    if baseline is not None:
        fig.add_hline(y=baseline, line_dash="dot", annotation_text="unsteered zero-shot")
    fig.update_layout(title=title, xaxis_title=x_title,
                      yaxis=dict(title="zero-shot top-1", range=[0, 1.02]))
    if x_log:
        fig.update_xaxes(type="log")
    return fig


def layer_curves(results: Mapping[str, Any], *, task: str | None = None,
                 split: str = "test") -> go.Figure:
    """Accuracy vs injection layer, one line per (task ·) strategy.

    Args:
        results: the dict ``fvlens strategies`` writes.
        task: one task (lines = strategies, with its unsteered baseline), or None for all.
        split: "test" or "val" sweep.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    curves = _curves(results, f"layer_sweep_{split}", task)
    base = None
    if task is not None:
        base = results["tasks"][task].get("zero_shot_top1" if split == "test"
                                          else "zero_shot_val_top1")
    return _line_figure(curves, "injection layer (hook_resid_post)",
                        f"accuracy vs layer ({split}){' · ' + task if task else ''}",
                        baseline=base)


def scale_curves(results: Mapping[str, Any], *, task: str | None = None) -> go.Figure:
    """Test accuracy vs scale at each strategy's best layer."""
    curves = _curves(results, "scale_sweep", task)
    return _line_figure(curves, "scale", f"accuracy vs scale at the best layer"
                        f"{' · ' + task if task else ''}", x_log=True)
