"""Where and how strongly to inject: one residual cache of a batch, and sweeps that resume from it.

A vector added at ``blocks.{L}.hook_resid_post`` (or any hook list acting only from block S
up) leaves the blocks below unchanged, so one unsteered pass that keeps the residual stream
between blocks serves every layer, scale and vector: each evaluation runs only the blocks
above its edit (TransformerLens ``start_at_layer``, via ``fvlens.forward.resume``). The results
equal a full forward pass with the same hook list (tested). The same cache gives the unsteered
evaluation of the batch for free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from fvlens.batch import PromptBatch, auto_batch_size
from fvlens.evaluation import Evaluation, evaluation_from_logits
from fvlens.forward import final_logits, resume, token_budget
from fvlens.hooks import HookList, hook_name

__all__ = ["ResidualCache", "residual_cache", "steered_evaluation", "layer_sweep",
           "scale_sweep", "best_layer", "best_layer_and_scale", "DEFAULT_SCALES"]

DEFAULT_SCALES = (0.5, 1.0, 2.0, 4.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResidualCache:
    """The residual stream of an unsteered pass over a batch, between every two blocks.

    Attributes:
        batch: the prompts.
        chunks: the row chunks the pass ran in.
        resid: per chunk ``[n_layers + 1, rows, pos, d_model]``: index 0 is the input of block
            0, index ``L + 1`` the output of block ``L`` (``blocks.{L}.hook_resid_post``).
        unsteered: the batch's evaluation without any edit (from the same pass).
    """

    batch: PromptBatch
    chunks: tuple[PromptBatch, ...]
    resid: tuple[Tensor, ...]
    unsteered: Evaluation

    def check(self, batch: PromptBatch) -> None:
        if batch is not self.batch:
            raise ValueError("this residual cache was built for another batch; pass "
                             "residual_cache(model, batch) of the batch you evaluate")


@torch.no_grad()
def residual_cache(model: HookedTransformer, batch: PromptBatch, *,
                   batch_size: int | None = None) -> ResidualCache:
    """Run ``batch`` once, keeping the residual stream before and after every block.

    Args:
        batch_size: rows per pass; None sizes passes by tokens (``fvlens.batch``).
    """
    n = model.cfg.n_layers
    size = auto_batch_size(batch, batch_size, tokens_per_pass=token_budget(model))
    chunks = batch.chunks(size)
    resid, logits = [], []
    for chunk in chunks:
        store: list[Tensor | None] = [None] * (n + 1)

        def grab(x: Tensor, hook, *, _store=store) -> None:
            name = hook.name
            _store[0 if name.endswith("hook_resid_pre") else hook.layer() + 1] = x.detach()

        hooks = [(hook_name("resid_pre", 0), grab)]
        hooks += [(hook_name("resid_post", layer), grab) for layer in range(n)]
        with model.hooks(fwd_hooks=hooks):
            model(chunk.tokens.to(model.cfg.device),
                  attention_mask=chunk.attention_mask.to(model.cfg.device), stop_at_layer=n)
        stacked = torch.stack(store)  # type: ignore[arg-type]
        resid.append(stacked)
        logits.append(final_logits(model, stacked[-1][:, -1]).float().cpu())
    return ResidualCache(batch=batch, chunks=tuple(chunks), resid=tuple(resid),
                         unsteered=evaluation_from_logits(torch.cat(logits), batch.targets))


@torch.no_grad()
def steered_evaluation(model: HookedTransformer, cache: ResidualCache, *, start: int,
                       vector: Float[Tensor, " d_model"] | None = None,
                       fwd_hooks: HookList = ()) -> Evaluation:
    """Evaluate the cached batch with an edit that acts from block ``start`` upwards.

    Args:
        cache: the batch's residual cache.
        start: the first block to run again; the residual entering it comes from the cache.
        vector: added at the last position of the residual entering block ``start`` (that is
            ``FunctionVector(vector).hooks(start - 1)``).
        fwd_hooks: hooks active in blocks ``start ..`` (e.g. a DFV whose lowest head is in
            block ``start``); hooks on lower blocks would not fire.

    Returns:
        The evaluation, equal to a full forward pass with the same edit.
    """
    if not 0 <= start <= model.cfg.n_layers:
        raise ValueError(f"start must be in [0, {model.cfg.n_layers}], got {start}")
    logits = []
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for chunk, resid in zip(cache.chunks, cache.resid):
            x = resid[start]
            if vector is not None:
                x = x.clone()
                x[:, -1] += vector.to(device=x.device, dtype=x.dtype)
            x = resume(model, x, start=start, attention_mask=chunk.attention_mask)
            logits.append(final_logits(model, x[:, -1]).float().cpu())
    return evaluation_from_logits(torch.cat(logits), cache.batch.targets)


def _per_layer(model: HookedTransformer, vectors: Tensor) -> Tensor:
    n = model.cfg.n_layers
    if vectors.ndim == 1:
        return vectors.expand(n, -1)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise ValueError(f"vectors must be [d_model] or [n_layers={n}, d_model], got shape "
                         f"{tuple(vectors.shape)}")
    return vectors


def layer_sweep(model: HookedTransformer, batch: PromptBatch,
                vectors: Float[Tensor, " d_model"] | Float[Tensor, "n_layers d_model"], *,
                layers: Sequence[int] | None = None, scale: float = 1.0,
                cache: ResidualCache | None = None) -> dict[int, Evaluation]:
    """Evaluate ``scale * vector`` added at the last position of each layer's
    ``hook_resid_post`` (what ``FunctionVector.hooks(layer)`` does).

    Args:
        batch: the prompts (usually zero-shot validation queries).
        vectors: one vector for every layer, or row L for layer L.
        layers: layers to try; default all.
        scale: multiplier of the vector.
        cache: ``residual_cache(model, batch)``, to share across vectors and sweeps.

    Returns:
        ``{layer: Evaluation}``.
    """
    table = _per_layer(model, vectors)
    cache = cache or residual_cache(model, batch)
    cache.check(batch)
    n = model.cfg.n_layers
    layers = range(n) if layers is None else layers
    out = {}
    for layer in layers:
        if not 0 <= layer < n:
            raise ValueError(f"layer {layer} out of range: the model has layers 0..{n - 1}")
        out[int(layer)] = steered_evaluation(model, cache, start=layer + 1,
                                             vector=scale * table[layer])
    return out


def scale_sweep(model: HookedTransformer, batch: PromptBatch,
                vectors: Float[Tensor, " d_model"] | Float[Tensor, "n_layers d_model"],
                layer: int, *, scales: Sequence[float] = DEFAULT_SCALES,
                cache: ResidualCache | None = None) -> dict[float, Evaluation]:
    """Evaluate the vector at one layer for each scale."""
    table = _per_layer(model, vectors)
    cache = cache or residual_cache(model, batch)
    cache.check(batch)
    return {float(s): steered_evaluation(model, cache, start=layer + 1, vector=s * table[layer])
            for s in scales}


def best_layer(sweep: Mapping[int, Evaluation]) -> int:
    """Layer with the best top-1 (ties: lower mean target rank, then the lower layer)."""
    if not sweep:
        raise ValueError("empty layer sweep: evaluate at least one layer")
    return min(sweep, key=lambda layer: (-sweep[layer].top1,
                                         float(sweep[layer].ranks.float().mean()), layer))


def best_layer_and_scale(model: HookedTransformer, batch: PromptBatch,
                         vectors: Float[Tensor, " d_model"] | Float[Tensor, "n_layers d_model"],
                         *, scales: Sequence[float] = DEFAULT_SCALES,
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
    cache = cache or residual_cache(model, batch)
    grid: dict[tuple[int, float], Evaluation] = {}
    for scale in scales:
        sweep = (sweep_at_1 if scale == 1.0 and sweep_at_1 is not None else
                 layer_sweep(model, batch, vectors, scale=scale, cache=cache))
        grid.update({(layer, float(scale)): ev for layer, ev in sweep.items()})
    return min(grid, key=lambda ls: (-grid[ls].top1, float(grid[ls].ranks.float().mean()),
                                     abs(math.log(ls[1])), ls[0]))
