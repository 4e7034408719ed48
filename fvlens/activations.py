"""Per-head activations at the last token: the raw material of function vectors.

A head's output before ``W_O`` is ``blocks.{L}.attn.hook_z`` (``[batch, pos, n_heads, d_head]``).
Function vectors average it at the last token over prompts the model answers correctly.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens import HookedTransformer

from fvlens.evaluate import (DEFAULT_BATCH_SIZE, _forward_last, auto_batch_size,
                             evaluation_from_logits)
from fvlens.hooks import hook_name
from fvlens.prompts import PromptBatch

__all__ = ["last_token_head_activations", "mean_head_activations"]


@torch.no_grad()
def last_token_head_activations(
    model: HookedTransformer, batch: PromptBatch, *, batch_size: int | None = DEFAULT_BATCH_SIZE
) -> tuple[Float[Tensor, "batch n_layers n_heads d_head"], Bool[Tensor, " batch"]]:
    """Every head's ``hook_z`` at the last token of every prompt, and whether the prompt's
    top-1 prediction is its target.

    Args:
        model: the model.
        batch: left-padded prompts (the last real token is at position -1).
        batch_size: rows per forward pass.

    Returns:
        ``(z, correct)``: z of shape ``[batch, n_layers, n_heads, d_head]`` (float32, CPU) and
        the top-1 correctness of each row.
    """
    n_layers = model.cfg.n_layers
    zs, correct = [], []
    for chunk in batch.chunks(auto_batch_size(batch, batch_size)):
        store: list[Tensor | None] = [None] * n_layers

        def grab(z: Tensor, hook, layer: int) -> None:
            store[layer] = z[:, -1].detach().float().cpu()

        hooks = [(hook_name("z", layer), _bind(grab, layer)) for layer in range(n_layers)]
        with model.hooks(fwd_hooks=hooks):
            logits = _forward_last(model, chunk.tokens, chunk.attention_mask)
        zs.append(torch.stack(store, dim=1))  # type: ignore[arg-type]
        correct.append(evaluation_from_logits(logits, chunk.targets).correct)
    return torch.cat(zs), torch.cat(correct)


def mean_head_activations(
    model: HookedTransformer, batch: PromptBatch, *, only_correct: bool = True,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
) -> Float[Tensor, "n_layers n_heads d_head"]:
    """Each head's ``hook_z`` at the last token, averaged over prompts.

    Args:
        model: the model.
        batch: the prompts (ICL prompts, or instruction prompts in instruction mode).
        only_correct: average only over prompts whose top-1 prediction is the target (Todd et
            al.); raises when no prompt qualifies.
        batch_size: rows per forward pass.

    Returns:
        The mean activation, ``[n_layers, n_heads, d_head]``.
    """
    z, correct = last_token_head_activations(model, batch, batch_size=batch_size)
    if only_correct:
        if not correct.any():
            raise ValueError(
                f"the model answers none of the {len(batch)} {batch.kind} prompts correctly, so "
                "there is no mean activation to take; use more shots, another task, or "
                "only_correct=False")
        z = z[correct]
    return z.mean(0)


def _bind(fn, layer: int):
    def hook(z: Tensor, hook) -> None:
        return fn(z, hook, layer)

    return hook
