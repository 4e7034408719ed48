"""Per-head activations at the last token: the raw material of function vectors.

A head's output before ``W_O`` is ``blocks.{L}.attn.hook_z`` (``[batch, pos, n_heads, d_head]``).
Function vectors average it at the last token over prompts the model answers correctly.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens import HookedTransformer

from fvlens.batch import PromptBatch
from fvlens.forward import forward_last, map_chunks, token_budget
from fvlens.hooks import hook_name

__all__ = ["last_token_head_activations", "mean_head_activations", "mean_of_correct"]


@torch.no_grad()
def last_token_head_activations(
    model: HookedTransformer, batch: PromptBatch, *, batch_size: int | None = None
) -> tuple[Float[Tensor, "batch n_layers n_heads d_head"], Bool[Tensor, " batch"]]:
    """Every head's ``hook_z`` at the last token of every prompt, and whether the prompt's
    top-1 prediction is its target (one forward pass over the batch).

    Args:
        model: the model.
        batch: left-padded prompts (the last real token is at position -1).
        batch_size: rows per forward pass; None sizes passes by tokens.

    Returns:
        ``(z, correct)``: z of shape ``[batch, n_layers, n_heads, d_head]`` (float32, CPU) and
        the top-1 correctness of each row.
    """
    n_layers = model.cfg.n_layers

    def run(chunk: PromptBatch) -> tuple[Tensor, Tensor]:
        store: list[Tensor | None] = [None] * n_layers

        def grab(z: Tensor, hook) -> None:
            store[hook.layer()] = z[:, -1].detach().float().cpu()

        with model.hooks(fwd_hooks=[(hook_name("z", layer), grab) for layer in range(n_layers)]):
            logits = forward_last(model, chunk.tokens, chunk.attention_mask)
        correct = logits.argmax(-1).cpu() == chunk.targets
        return torch.stack(store, dim=1), correct  # type: ignore[arg-type]

    parts = map_chunks(batch, run, batch_size=batch_size, tokens_per_pass=token_budget(model))
    return torch.cat([z for z, _ in parts]), torch.cat([c for _, c in parts])


def mean_head_activations(
    model: HookedTransformer, batch: PromptBatch, *, only_correct: bool = True,
    batch_size: int | None = None,
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
    return mean_of_correct(z, correct, batch, only_correct=only_correct)


def mean_of_correct(z: Float[Tensor, "batch n_layers n_heads d_head"],
                    correct: Bool[Tensor, " batch"], batch: PromptBatch, *,
                    only_correct: bool = True) -> Float[Tensor, "n_layers n_heads d_head"]:
    """The mean of ``z`` over the rows answered correctly (all rows without ``only_correct``)."""
    if only_correct:
        if not correct.any():
            mode = "instruction" if batch.kind.startswith("instruction") else "ICL"
            fix = ("another instruction or an instruction-tuned model" if mode == "instruction"
                   else "more shots or another task")
            raise ValueError(
                f"the model answers none of the {len(batch)} {mode} prompts correctly, so "
                f"there is no mean activation to take; try {fix}")
        z = z[correct]
    return z.mean(0)
