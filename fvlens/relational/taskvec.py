"""ICL task vectors: what the demonstrations add to the last position, at every layer.

For a relation's pairs, the task vector at layer L is the mean over queries of the last-token
``blocks.{L}.hook_resid_post`` of an ICL prompt (demonstrations from the same pairs) minus the
same mean over the zero-shot prompts ``Q: {x}\\nA:`` (a mean-difference vector in the manner of
Hendel et al. 2023, with no head selection). It costs one ICL and one zero-shot pass, gives a
vector for every layer at once, and serves two purposes in fine-tuning: an initialisation that
already points where the demonstrations push (``FinetuneConfig(init="icl_mean")``), and a cheap
screen of injection layers (``screen_layers``: the task vector's validation top-1 at each layer,
one resumed pass per layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from fvlens.modeltype import Model

from fvlens.forward import final_logits, ranks_of, resume
from fvlens.hooks import hook_name
from fvlens.injection import layer_sweep, residual_cache
from fvlens.prompts import PromptBatch, icl_prompts, zero_shot_prompts
from fvlens.tasks import Pair

__all__ = ["last_residuals", "task_vectors", "screen_layers", "screen_many"]


@torch.no_grad()
def last_residuals(model: Model, batch: PromptBatch, *, chunk: int = 16
                   ) -> Float[Tensor, "n_layers batch d_model"]:
    """Every layer's ``hook_resid_post`` at the last position of each row."""
    names = {hook_name("resid_post", layer) for layer in range(model.cfg.n_layers)}
    out = []
    for c in batch.chunks(chunk):
        _, cache = model.run_with_cache(c.tokens.to(model.cfg.device),
                                        attention_mask=c.attention_mask.to(model.cfg.device),
                                        names_filter=lambda n: n in names)
        out.append(torch.stack([cache[hook_name("resid_post", layer)][:, -1].float().cpu()
                                for layer in range(model.cfg.n_layers)]))
    return torch.cat(out, 1)


def task_vectors(model: Model, pairs: Sequence[Pair], *, shots: int = 5,
                 seed: int = 0) -> Float[Tensor, "n_layers d_model"]:
    """Mean last-token residual of ICL prompts minus that of zero-shot prompts, per layer.

    Args:
        pairs: the relation's (training) pairs; each is a query once, with ``shots``
            demonstrations drawn from the others (fewer when there are not enough).
        shots: demonstrations per ICL prompt.
    """
    pairs = list(pairs)
    k = min(shots, len(pairs) - 1)
    if k < 1:
        raise ValueError(f"a task vector needs at least 2 pairs, got {len(pairs)}")
    icl = last_residuals(model, icl_prompts(model, pairs, pairs, shots=k, seed=seed)).mean(1)
    zs = last_residuals(model, zero_shot_prompts(model, pairs)).mean(1)
    return icl - zs


def screen_layers(model: Model, vectors: Float[Tensor, "n_layers d_model"],
                  val: PromptBatch, *, layers: Sequence[int] | None = None) -> dict[int, dict]:
    """Validation first-token top-1 and mean target rank of each layer's task vector added at
    that layer (``fvlens.injection.layer_sweep``).

    Returns:
        ``{layer: {"top1", "mean_rank"}}``.
    """
    sweep = layer_sweep(model, val, vectors, layers=layers)
    return {layer: {"top1": ev.top1, "mean_rank": float(ev.ranks.float().mean())}
            for layer, ev in sweep.items()}


@torch.no_grad()
def screen_many(model: Model, vectors: Sequence[Tensor], vals: Sequence[PromptBatch]
                ) -> list[dict[int, dict]]:
    """``screen_layers`` for many relations at once: every relation's validation prompts in
    one residual cache, each row steered by its own relation's task vector, one resumed pass
    per layer (instead of one per layer and relation).

    Args:
        vectors: per relation ``[n_layers, d_model]`` task vectors.
        vals: per relation its validation prompts.
    """
    if len(vectors) != len(vals):
        raise ValueError(f"{len(vectors)} task vectors for {len(vals)} validation batches")
    batch = PromptBatch.concat(list(vals))
    owner = torch.cat([torch.full((len(v),), k, dtype=torch.long) for k, v in enumerate(vals)])
    table = torch.stack([v.float() for v in vectors])  # [relations, n_layers, d_model]
    cache = residual_cache(model, batch)
    out: list[dict[int, dict]] = [{} for _ in vals]
    for layer in range(model.cfg.n_layers):
        logits, start = [], 0
        for chunk, resid in zip(cache.chunks, cache.resid):
            rows = owner[start:start + len(chunk)]
            x = resid[layer + 1].clone()
            x[:, -1] += table[rows, layer].to(device=x.device, dtype=x.dtype)
            x = resume(model, x, start=layer + 1, attention_mask=chunk.attention_mask)
            logits.append(final_logits(model, x[:, -1]).float().cpu())
            start += len(chunk)
        ranks = ranks_of(torch.cat(logits), batch.targets)
        for k in range(len(vals)):
            r = ranks[owner == k]
            out[k][layer] = {"top1": float((r == 0).float().mean()),
                             "mean_rank": float(r.float().mean())}
    return out
