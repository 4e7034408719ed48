"""Injection depth: how a task vector's zero-shot accuracy depends on the layer and the scale.

A ``TaskVector`` holds one ``[d_model]`` vector per layer (a head FV repeats its single
vector; mean-difference and PCA vectors differ per layer) and turns into the same hook list
as ``FunctionVector``: ``scale * v[L]`` added to ``blocks.{L}.hook_resid_post`` at the last
position.

The sweeps over layers and scales are ``fvlens.injection``'s (pass ``tv.vectors``: row L is
injected at layer L), sharing one residual cache across every strategy; this module adds the
depth summary and the figures.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from fvlens.heads.scores import Head
from fvlens.hooks import HookList
from fvlens.steering import FunctionVector

__all__ = ["TaskVector", "depth_summary"]


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
