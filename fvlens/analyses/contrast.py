"""Paired clean/corrupted prompts and their last-token activations: the data of the
extraction strategies (``fvlens.analyses.strategies``).

Row i of the corrupted batch is row i of the clean batch with its demonstrations' labels
deranged (``fvlens.prompts.corrupted``): the same query and demonstrations, so their difference
isolates the task. One pass per batch (``fvlens.heads.gradient.last_token_pass``) records the
residual stream of every layer and every head's output at the last token, and on the
corrupted prompts the gradient of P(target) that attribution patching needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from jaxtyping import Bool, Float
from torch import Tensor

from fvlens.batch import PromptBatch
from fvlens.heads.gradient import last_token_pass
from fvlens.modeltype import Model
from fvlens.prompts import corrupted as corrupted_of
from fvlens.prompts import icl_prompts
from fvlens.tasks import Pair, Task

__all__ = ["BASELINES", "Contrast", "paired_icl_prompts", "contrast_pass"]

BASELINES = ("shuffled", "zero_shot")


def paired_icl_prompts(model: Model, queries: Sequence[Pair],
                       demonstrations: Task | Sequence[Pair], *, shots: int = 10, seed: int = 0
                       ) -> tuple[PromptBatch, PromptBatch]:
    """Clean ICL prompts and their corrupted twins (same query and demonstrations per row,
    labels deranged)."""
    clean = icl_prompts(model, queries, demonstrations, shots=shots, seed=seed)
    return clean, corrupted_of(model, clean, seed=seed)


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


def contrast_pass(model: Model, clean: PromptBatch, corrupted: PromptBatch, *,
                  zero_shot: PromptBatch | None = None, batch_size: int = 8) -> Contrast:
    """Residuals of paired prompts; on the corrupted ones also z and ∂P(target)/∂z.

    Args:
        clean: clean ICL prompts.
        corrupted: their corrupted twins, row for row (``paired_icl_prompts``).
        zero_shot: optionally the zero-shot prompts of the same queries, row for row.
        batch_size: rows per pass.
    """
    if len(clean) != len(corrupted) or (zero_shot is not None and len(zero_shot) != len(clean)):
        raise ValueError(f"{len(clean)} clean but {len(corrupted)} corrupted prompts; pair "
                         "them with paired_icl_prompts")
    c = last_token_pass(model, clean, grad=False, batch_size=batch_size)
    x = last_token_pass(model, corrupted, grad=True, batch_size=batch_size)
    z_resid = (last_token_pass(model, zero_shot, grad=False, batch_size=batch_size).resid
               if zero_shot is not None else None)
    return Contrast(clean_resid=c.resid, corrupted_resid=x.resid, zero_shot_resid=z_resid,
                    clean_correct=c.correct, z_clean=c.z, z_corrupted=x.z,
                    grad_z=x.grad_z)  # type: ignore[arg-type]
