"""Scoring heads: ``score_heads(model, clean, method=...) -> HeadScores``.

- ``"aie"``: average indirect effect (causal mediation, ``fvlens.heads.aie``) of patching each
  head's mean activation into corrupted prompts (Todd et al. 2024).
- ``"attnlrp"``: for each clean prompt the model answers with the target in its top 5,
  ρ_h = Σ_{j ∈ frame} max(R(A_h[last, j]), 0), the positive AttnLRP relevance of head h's
  attention from the last token to the frame tokens, averaged over prompts (Pham et al. 2026).
  The frame is the instruction's annotated frame in instruction prompts; in ICL prompts it is
  the demonstrations' answer tokens (``frame="answers"``) or every demonstration token
  (``frame="context"``).
"""

from __future__ import annotations

import time

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from fvlens.activations import mean_head_activations
from fvlens.heads.aie import indirect_effects
from fvlens.heads.scores import HeadScores
from fvlens.prompts import PromptBatch

__all__ = ["score_heads", "METHODS", "attnlrp_head_relevance"]

METHODS = ("aie", "attnlrp")
LRP_TOP = 5  # an AttnLRP sample must have its target within the model's top 5


def _mode(batch: PromptBatch) -> str:
    return "instruction" if batch.kind.startswith("instruction") else "icl"


def score_heads(
    model: HookedTransformer, clean: PromptBatch, *, method: str = "aie",
    corrupted: PromptBatch | None = None,
    mean_z: Float[Tensor, "n_layers n_heads d_head"] | None = None, task: str = "",
    frame: str = "answers", aie_impl: str = "fast", batch_size: int | None = None,
    progress: bool = True,
) -> HeadScores:
    """Score every attention head for how much it carries the task.

    Args:
        model: the model.
        clean: clean ICL or instruction prompts (AttnLRP's samples; AIE's mean activations
            when ``mean_z`` is not given).
        method: "aie" or "attnlrp".
        corrupted: AIE's corrupted prompts (shuffled-label ICL or neutral instructions).
        mean_z: AIE's patch values; default the mean over correctly answered clean prompts.
        task: task name recorded in the scores.
        frame: AttnLRP's frame in ICL prompts: "answers" or "context".
        aie_impl: "fast" or "reference" causal mediation.
        batch_size: prompts per pass.

    Returns:
        HeadScores with ``meta["seconds"]`` the wall time of the scoring itself.
    """
    if method not in METHODS:
        raise ValueError(f"unknown head-selection method {method!r}; choose from {METHODS}")
    t0 = time.perf_counter()
    if method == "aie":
        if corrupted is None:
            raise ValueError("method='aie' needs corrupted prompts: icl_prompts(…, "
                             "shuffle_labels=True) or instruction_prompts(…, corrupt=True)")
        if mean_z is None:
            mean_z = mean_head_activations(model, clean)
        t0 = time.perf_counter()
        cie = indirect_effects(model, corrupted, mean_z, method=aie_impl, batch_size=batch_size,
                               progress=progress)
        scores, n = cie.mean(0), len(corrupted)
    else:
        per_sample = attnlrp_head_relevance(model, clean, frame=frame,
                                            batch_size=batch_size or 4, progress=progress)
        if per_sample.shape[0] == 0:
            raise ValueError(f"no {clean.kind} prompt has its target in the model's top "
                             f"{LRP_TOP}: AttnLRP head selection has no samples")
        scores, n = per_sample.mean(0), per_sample.shape[0]
    seconds = time.perf_counter() - t0
    return HeadScores(scores=scores.float(), method=method, tasks=(task or "task",),
                      prompt_mode=_mode(clean), n_samples=int(n),
                      meta={"seconds": seconds, "frame": frame if method == "attnlrp" else None,
                            "impl": aie_impl if method == "aie" else None})


def attnlrp_head_relevance(
    model: HookedTransformer, clean: PromptBatch, *, frame: str = "answers", batch_size: int = 4,
    progress: bool = True,
) -> Float[Tensor, "samples n_layers n_heads"]:
    """ρ_h of every head for each clean prompt whose target is in the model's top 5.

    Returns:
        ``[n_kept, n_layers, n_heads]``; prompts outside the top-5 filter are dropped.
    """
    from fvlens.attnlrp import explain_batch

    if frame not in ("answers", "context"):
        raise ValueError(f"frame must be 'answers' or 'context', got {frame!r}")
    out = []
    for chunk in tqdm(clean.chunks(batch_size), desc="AttnLRP", disable=not progress):
        rel = explain_batch(model, chunk.tokens, chunk.targets,
                            attention_mask=chunk.attention_mask)
        keep = rel.ranks < LRP_TOP  # from the relevance pass itself: no extra forward
        positions = chunk.frame_positions if (frame == "answers" or _mode(chunk) ==
                                              "instruction") else chunk.context_positions
        select = torch.zeros(chunk.tokens.shape, dtype=torch.bool)
        for row, pos in enumerate(positions):
            select[row, list(pos)] = True
        attn = rel.attention.float().clamp(min=0)  # [b, L, H, pos]
        out.append((attn * select[:, None, None, :]).sum(-1)[keep])
    return torch.cat(out)
