"""Head patches at the last position, the one intervention causal mediation makes.

``patch_head_hooks`` sets one head for every row (the reference path); ``row_patch_hooks``
sets a different head in each row (the fast paths batch every head of a layer as one row
each). Both are hook lists on ``hook_z`` and leave no hook behind.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from fvlens.hooks import HookList, hook_name

__all__ = ["patch_head_hooks", "row_patch_hooks", "target_probs"]


def patch_head_hooks(layer: int, head: int, value: Float[Tensor, " d_head"]) -> HookList:
    """A hook list that sets head ``head`` of ``layer`` to ``value`` at the last position."""

    def hook(z: Tensor, hook) -> Tensor:
        z = z.clone()
        z[:, -1, head] = value.to(z)
        return z

    return [(hook_name("z", layer), hook)]


def row_patch_hooks(layer: int, heads: Int[Tensor, " rows"],
                    values: Float[Tensor, "rows d_head"]) -> HookList:
    """A hook list that sets, in row r, head ``heads[r]`` of ``layer`` to ``values[r]`` at the
    last position (one patched head per row)."""
    if heads.shape[0] != values.shape[0]:
        raise ValueError(f"{heads.shape[0]} heads for {values.shape[0]} values: one each")

    def hook(z: Tensor, hook) -> Tensor:
        if z.shape[0] != heads.shape[0]:
            raise ValueError(f"the patch has {heads.shape[0]} rows, the batch {z.shape[0]}")
        z = z.clone()
        z[torch.arange(z.shape[0], device=z.device), -1, heads.to(z.device)] = values.to(z)
        return z

    return [(hook_name("z", layer), hook)]


def target_probs(logits: Float[Tensor, "batch d_vocab"],
                 targets: Int[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    """Each row's softmax probability of its target token, in float32 on the CPU."""
    return logits.float().softmax(-1).gather(1, targets[:, None].to(logits.device))[:, 0].cpu()
