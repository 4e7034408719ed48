"""Attribution patching: a first-order estimate of every head's indirect effect from one pass.

score(L, h) = mean over corrupted prompts of (mean_z[L,h] − z_corr[L,h]) · ∂P(target)/∂z[L,h]
at the last position (Nanda 2023; Syed et al. 2023): the linear estimate of the rise in
P(target) when head h's last-token output is patched with its clean mean, i.e. of Todd et
al.'s CIE (``fvlens.heads.aie``), for all heads from one forward and one backward pass per
prompt instead of one patched run per head.

``last_token_pass`` records what this needs (and the residual stream of every layer at the last
token, which the extraction strategies of ``fvlens.analyses`` use) in a single pass.
"""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from fvlens.backend import pass_on
from fvlens.batch import PromptBatch
from fvlens.forward import final_logits, run_to
from fvlens.heads.scores import HeadScores
from fvlens.hooks import frozen_parameters, hook_name
from fvlens.modeltype import Model

__all__ = ["LastToken", "last_token_pass", "attribution_scores", "gradient_head_scores"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LastToken:
    """Last-token activations of a batch (float32, CPU).

    Attributes:
        resid: every layer's ``hook_resid_post``.
        z: every head's ``hook_z``.
        grad_z: ∂P(target)/∂``hook_z`` (None when not asked for).
        target_probs: P(target) of each row.
        correct: whether each row's top-1 is its target.
    """

    resid: Float[Tensor, "batch n_layers d_model"]
    z: Float[Tensor, "batch n_layers n_heads d_head"]
    grad_z: Float[Tensor, "batch n_layers n_heads d_head"] | None
    target_probs: Float[Tensor, " batch"]
    correct: Bool[Tensor, " batch"]

    @staticmethod
    def cat(parts: list[LastToken]) -> LastToken:
        return LastToken(resid=torch.cat([p.resid for p in parts]),
                         z=torch.cat([p.z for p in parts]),
                         grad_z=None if parts[0].grad_z is None else
                         torch.cat([p.grad_z for p in parts]),  # type: ignore[misc]
                         target_probs=torch.cat([p.target_probs for p in parts]),
                         correct=torch.cat([p.correct for p in parts]))


def last_token_pass(model: Model, batch: PromptBatch, *, grad: bool,
                    batch_size: int = 8) -> LastToken:
    """One pass per chunk recording resid_post and z of every layer at the last token, and
    with ``grad`` the gradient of P(target) with respect to z (rows are independent, so one
    backward of the summed probabilities gives every row's own gradient).

    Args:
        batch: left-padded prompts.
        grad: also take ∂P(target)/∂z (parameters are frozen for the pass).
        batch_size: rows per pass.
    """
    n_layers = model.cfg.n_layers
    parts = []
    for chunk in batch.chunks(batch_size):
        resid: list[Tensor | None] = [None] * n_layers
        zs: list[Tensor | None] = [None] * n_layers

        def grab_resid(x: Tensor, hook) -> None:
            resid[hook.layer()] = x[:, -1].detach().float().cpu()

        def grab_z(z: Tensor, hook) -> Tensor | None:
            zs[hook.layer()] = z
            return pass_on(z, hook)  # a bridge's hook_z is a view: keep it on the path

        hooks = [(hook_name("resid_post", layer), grab_resid) for layer in range(n_layers)]
        hooks += [(hook_name("z", layer), grab_z) for layer in range(n_layers)]
        if grad:
            hooks = [("hook_embed", lambda x, hook: x.detach().requires_grad_(True))] + hooks
        with frozen_parameters(model), torch.set_grad_enabled(grad), \
                model.hooks(fwd_hooks=hooks):
            logits = final_logits(model, run_to(model, chunk.tokens, chunk.attention_mask)[:, -1])
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            targets = chunk.targets.to(logits.device)
            probs = logits.softmax(-1).gather(1, targets[:, None])[:, 0]
            grads = None
            if grad:
                full = torch.autograd.grad(probs.sum(), zs)  # type: ignore[arg-type]
                grads = torch.stack([g[:, -1].float().cpu() for g in full], dim=1)
        parts.append(LastToken(
            resid=torch.stack(resid, dim=1),  # type: ignore[arg-type]
            z=torch.stack([z[:, -1].detach().float().cpu() for z in zs], dim=1),  # type: ignore
            grad_z=grads, target_probs=probs.detach().float().cpu(),
            correct=logits.detach().argmax(-1).cpu() == chunk.targets))
    return LastToken.cat(parts)


def attribution_scores(z: Float[Tensor, "batch n_layers n_heads d_head"],
                       grad_z: Float[Tensor, "batch n_layers n_heads d_head"],
                       mean_z: Float[Tensor, "n_layers n_heads d_head"], *, task: str = "task",
                       prompt_mode: str = "icl") -> HeadScores:
    """``HeadScores(method="gradient")`` from the corrupted prompts' last-token ``z`` and
    ∂P(target)/∂z (``last_token_pass(..., grad=True)``) and the clean mean activations."""
    delta = mean_z.float()[None] - z
    scores = (delta * grad_z).sum(-1).mean(0)
    return HeadScores(scores=scores, method="gradient", tasks=(task,), prompt_mode=prompt_mode,
                      n_samples=int(z.shape[0]),
                      meta={"estimate": "attribution patching, dP(target)/dz"})


def gradient_head_scores(model: Model, corrupted: PromptBatch,
                         mean_z: Float[Tensor, "n_layers n_heads d_head"], *,
                         task: str = "task") -> HeadScores:
    """Attribution-patching scores of every head on ``corrupted`` prompts (one pass each)."""
    mode = "instruction" if corrupted.kind.startswith("instruction") else "icl"
    passed = last_token_pass(model, corrupted, grad=True)
    return attribution_scores(passed.z, passed.grad_z, mean_z, task=task,  # type: ignore[arg-type]
                              prompt_mode=mode)
