"""First-token evaluation: top-k accuracy and target rank, with or without a hook list.

``last_logits`` runs a batch in chunks through the forward core (``fvlens.forward``) and
unembeds only the last position (every prompt batch is left-padded, so that is each row's last
real token). ``evaluate`` turns logits into accuracy; ``baseline`` measures the zero-shot, ICL
and instruction baselines of a task. Layer and scale sweeps live in ``fvlens.injection``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from fvlens.batch import PromptBatch
from fvlens.forward import forward_last, map_chunks, ranks_of, token_budget
from fvlens.hooks import HookFn, check_hook_names
from fvlens.prompts import icl_prompts, instruction_prompts, target_ids, zero_shot_prompts
from fvlens.tasks import Task

__all__ = ["Evaluation", "last_logits", "evaluate", "baseline", "ranks_of",
           "evaluation_from_logits"]


@torch.no_grad()
def last_logits(model: HookedTransformer, batch: PromptBatch, *,
                fwd_hooks: Sequence[tuple[str, HookFn]] = (),
                batch_size: int | None = None) -> Float[Tensor, "batch vocab"]:
    """Logits at the last position of every row, with ``fwd_hooks`` applied (float32, CPU).

    Args:
        model: the model.
        batch: left-padded prompts.
        fwd_hooks: a hook list applied during the forward passes (removed afterwards).
        batch_size: rows per forward pass; None sizes passes by tokens.
    """
    check_hook_names(model, fwd_hooks)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        out = map_chunks(batch, lambda c: forward_last(model, c.tokens, c.attention_mask)
                         .float().cpu(), batch_size=batch_size,
                         tokens_per_pass=token_budget(model))
    return torch.cat(out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evaluation:
    """First-token results of one batch.

    Attributes:
        ranks: 0-based rank of each row's target among the vocabulary (0 = top-1).
        predictions: the top-1 token of each row.
        target_probs: probability of each row's target.
    """

    ranks: Int[Tensor, " batch"]
    predictions: Int[Tensor, " batch"]
    target_probs: Float[Tensor, " batch"]

    def top(self, k: int = 1) -> float:
        """Top-k accuracy."""
        return float((self.ranks < k).float().mean()) if len(self.ranks) else float("nan")

    @property
    def top1(self) -> float:
        return self.top(1)

    @property
    def top3(self) -> float:
        return self.top(3)

    @property
    def correct(self) -> Bool[Tensor, " batch"]:
        return self.ranks == 0

    def summary(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}top1": self.top1, f"{prefix}top3": self.top3,
                f"{prefix}mean_rank": float(self.ranks.float().mean())}


def evaluate(model: HookedTransformer, batch: PromptBatch, *,
             fwd_hooks: Sequence[tuple[str, HookFn]] = (),
             batch_size: int | None = None) -> Evaluation:
    """Top-k accuracy and target rank of ``batch`` under ``fwd_hooks``."""
    logits = last_logits(model, batch, fwd_hooks=fwd_hooks, batch_size=batch_size)
    return evaluation_from_logits(logits, batch.targets)


def evaluation_from_logits(logits: Float[Tensor, "batch vocab"],
                           targets: Int[Tensor, " batch"]) -> Evaluation:
    """Ranks, predictions and target probabilities of a batch's last-position logits."""
    if len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) < logits.shape[-1]:
        raise ValueError(f"target ids must be in [0, {logits.shape[-1]}) (the vocabulary), got "
                         f"{int(targets.min())}..{int(targets.max())}")
    probs = logits.float().softmax(-1)
    return Evaluation(ranks=ranks_of(logits, targets), predictions=logits.argmax(-1),
                      target_probs=probs.gather(1, targets[:, None])[:, 0])


def baseline(model: HookedTransformer, task: Task, *, shots: int = 10, n_test: int | None = 50,
             seed: int = 0, test_fraction: float = 0.3,
             modes: Sequence[str] = ("zero_shot", "icl", "instruction"),
             batch_size: int | None = None, progress: bool = True) -> dict[str, float | int]:
    """Zero-shot, ICL and instruction first-token accuracy of a task on its test split.

    Args:
        task: the task; split with ``task.split(test_fraction=..., seed=seed)``.
        shots: ICL demonstrations per prompt, drawn from the train split.
        n_test: test queries used (a seeded subset), or None for the whole test split.
        modes: which baselines to measure; "instruction" is skipped for tasks without
            instructions.

    Returns:
        ``{"n": …, "zero_shot_top1": …, "zero_shot_top3": …, "icl_top1": …, …,
        "n_multi_token_targets": …}``.
    """
    train, test = task.split(test_fraction=test_fraction, seed=seed)
    if n_test is not None and len(test) > n_test:
        test = test.sample(n_test, seed=seed)
    out: dict[str, float | int] = {"n": len(test)}
    builders = {
        "zero_shot": lambda: zero_shot_prompts(model, test),
        "icl": lambda: icl_prompts(model, test, train, shots=shots, seed=seed),
        "instruction": lambda: instruction_prompts(model, task, test, seed=seed),
    }
    unknown = set(modes) - set(builders)
    if unknown:
        raise ValueError(f"unknown baseline modes {sorted(unknown)}; choose from {list(builders)}")
    for mode in tqdm(modes, desc=f"baseline {task.name}", disable=not progress, leave=False):
        if mode == "instruction" and not task.instructions:
            continue
        result = evaluate(model, builders[mode](), batch_size=batch_size)
        out.update(result.summary(prefix=f"{mode}_"))
    out["n_multi_token_targets"] = target_ids(model, [p.output for p in test.pairs])[1]
    return out
