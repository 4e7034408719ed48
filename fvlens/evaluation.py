"""Evaluation: top-k accuracy and target rank, of the first answer token or the whole answer.

``last_logits`` runs a batch in chunks through the forward core (``fvlens.forward``) and
unembeds only the last position (every prompt batch is left-padded, so that is each row's last
real token). ``evaluate`` turns logits into accuracy; ``baseline`` measures the zero-shot, ICL
and instruction baselines of a task. Layer and scale sweeps live in ``fvlens.injection``.

``targets="full"`` scores every token of the answer, teacher-forced: the answer's tokens
follow the prompt in one forward pass, a row is correct when each answer token is the argmax
given the prompt and the answer before it, its rank is the worst of its tokens' ranks, and its
log-probability is the sum over its tokens. A steering hook list edits the prompt's last
position, so it is restricted to the prompt's positions (``fvlens.generation.restrict_to_prompt``):
the answer tokens see the steered prompt but get no edit of their own, as in generation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from fvlens.batch import DEFAULT_TEMPLATE, PromptBatch, Template
from fvlens.forward import final_logits, forward_last, map_chunks, ranks_of, run_to, token_budget
from fvlens.generation import restrict_to_prompt
from fvlens.hooks import HookFn, check_hook_names
from fvlens.modeltype import Model
from fvlens.prefix import MIN_SHARED, forward_shared, sharable
from fvlens.prompts import icl_prompts, instruction_prompts, target_ids, zero_shot_prompts
from fvlens.tasks import Task

__all__ = ["Evaluation", "last_logits", "evaluate", "baseline", "ranks_of",
           "evaluation_from_logits", "answer_evaluation", "TARGETS"]

TARGETS = ("first", "full")


@torch.no_grad()
def last_logits(model: Model, batch: PromptBatch, *,
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

    def run(c: PromptBatch) -> Tensor:
        shared = sharable(model, c) if not fwd_hooks else 0
        if shared >= MIN_SHARED:  # unhooked chat prompts: their common prefix once
            return final_logits(model, forward_shared(model, c, shared)[:, -1]).float().cpu()
        return forward_last(model, c.tokens, c.attention_mask).float().cpu()

    with model.hooks(fwd_hooks=list(fwd_hooks)):
        out = map_chunks(batch, run, batch_size=batch_size, tokens_per_pass=token_budget(model))
    return torch.cat(out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evaluation:
    """Results of one batch (first answer token, or the whole answer with ``targets="full"``).

    Attributes:
        ranks: 0-based rank of each row's target among the vocabulary (0 = top-1); for whole
            answers the worst rank over the answer's tokens (0: every token is the argmax).
        predictions: the top-1 token of each row (at the answer's first position).
        target_probs: probability of each row's target (whole answers: of the whole answer).
        logprobs: whole answers only: the answer's log-probability (sum over its tokens).
    """

    ranks: Int[Tensor, " batch"]
    predictions: Int[Tensor, " batch"]
    target_probs: Float[Tensor, " batch"]
    logprobs: Float[Tensor, " batch"] | None = None

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


def evaluate(model: Model, batch: PromptBatch, *,
             fwd_hooks: Sequence[tuple[str, HookFn]] = (),
             batch_size: int | None = None, targets: str = "first") -> Evaluation:
    """Top-k accuracy and target rank of ``batch`` under ``fwd_hooks``.

    Args:
        targets: "first" scores the answer's first token; "full" every token of it
            (``answer_evaluation``).
    """
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
    if targets == "full":
        return answer_evaluation(model, batch, fwd_hooks=fwd_hooks, batch_size=batch_size)
    logits = last_logits(model, batch, fwd_hooks=fwd_hooks, batch_size=batch_size)
    return evaluation_from_logits(logits, batch.targets)


@torch.no_grad()
def answer_evaluation(model: Model, batch: PromptBatch, *,
                      fwd_hooks: Sequence[tuple[str, HookFn]] = (),
                      batch_size: int | None = None) -> Evaluation:
    """Whole-answer results, teacher-forced: ``batch.answers`` follow the prompts.

    Each row is its left-padded prompt followed by its answer's tokens (right-padded, masked);
    the logits at the prompt's last position and at each answer token but the last score the
    next answer token. ``fwd_hooks`` act on the prompt's positions only.

    Returns:
        An ``Evaluation`` whose ``ranks`` are the worst rank over each answer's tokens,
        ``predictions`` the argmax at the first answer position, ``target_probs`` the whole
        answer's probability and ``logprobs`` its log-probability.
    """
    check_hook_names(model, fwd_hooks)

    def run(chunk: PromptBatch) -> tuple[Tensor, Tensor, Tensor]:
        n, width = chunk.tokens.shape
        longest = max(len(a) for a in chunk.answers)
        extra = torch.full((n, longest - 1), chunk.pad_id, dtype=torch.long)
        extra_mask = torch.zeros((n, longest - 1), dtype=torch.long)
        for i, a in enumerate(chunk.answers):
            extra[i, :len(a) - 1] = torch.as_tensor(a[:-1], dtype=torch.long)
            extra_mask[i, :len(a) - 1] = 1
        shared = sharable(model, chunk) if not fwd_hooks else 0
        if shared >= MIN_SHARED:  # unhooked: the rows' common prefix once
            resid = forward_shared(model, chunk, shared, extra=extra, extra_mask=extra_mask)
            logits = final_logits(model, resid[:, resid.shape[1] - longest:]).float().cpu()
        else:
            hooks = restrict_to_prompt(fwd_hooks, width) if longest > 1 else list(fwd_hooks)
            with model.hooks(fwd_hooks=hooks):
                resid = run_to(model, torch.cat([chunk.tokens, extra], 1),
                               torch.cat([chunk.attention_mask, extra_mask], 1))
                logits = final_logits(model, resid[:, width - 1:]).float().cpu()
        logp = logits.log_softmax(-1)
        worst = torch.zeros(n, dtype=torch.long)
        total = torch.zeros(n)
        for i, a in enumerate(chunk.answers):
            ids = torch.as_tensor(a, dtype=torch.long)
            steps = torch.arange(len(a))
            worst[i] = ranks_of(logits[i, steps], ids).max()
            total[i] = logp[i, steps, ids].sum()
        return worst, total, logits[:, 0].argmax(-1)

    parts = map_chunks(batch, run, batch_size=batch_size, tokens_per_pass=token_budget(model))
    logprobs = torch.cat([p[1] for p in parts])
    return Evaluation(ranks=torch.cat([p[0] for p in parts]),
                      predictions=torch.cat([p[2] for p in parts]),
                      target_probs=logprobs.exp(), logprobs=logprobs)


def evaluation_from_logits(logits: Float[Tensor, "batch vocab"],
                           targets: Int[Tensor, " batch"]) -> Evaluation:
    """Ranks, predictions and target probabilities of a batch's last-position logits."""
    if len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) < logits.shape[-1]:
        raise ValueError(f"target ids must be in [0, {logits.shape[-1]}) (the vocabulary), got "
                         f"{int(targets.min())}..{int(targets.max())}")
    probs = logits.float().softmax(-1)
    return Evaluation(ranks=ranks_of(logits, targets), predictions=logits.argmax(-1),
                      target_probs=probs.gather(1, targets[:, None])[:, 0])


def baseline(model: Model, task: Task, *, shots: int = 10, n_test: int | None = 50,
             seed: int = 0, test_fraction: float = 0.3,
             modes: Sequence[str] = ("zero_shot", "icl", "instruction"),
             batch_size: int | None = None, progress: bool = True,
             template: Template = DEFAULT_TEMPLATE, targets: str = "first"
             ) -> dict[str, float | int]:
    """Zero-shot, ICL and instruction accuracy of a task on its test split.

    Args:
        task: the task; split with ``task.split(test_fraction=..., seed=seed)``.
        shots: ICL demonstrations per prompt, drawn from the train split.
        n_test: test queries used (a seeded subset), or None for the whole test split.
        modes: which baselines to measure; "instruction" is skipped for tasks without
            instructions.
        template: how instruction and zero-shot prompts are written (e.g. in a chat
            template, ``fvlens.chat``); ICL prompts are always plain.
        targets: "first" token or "full" answer scoring.

    Returns:
        ``{"n": …, "zero_shot_top1": …, "zero_shot_top3": …, "icl_top1": …, …,
        "n_multi_token_targets": …}``.
    """
    train, test = task.split(test_fraction=test_fraction, seed=seed)
    if n_test is not None and len(test) > n_test:
        test = test.sample(n_test, seed=seed)
    out: dict[str, float | int] = {"n": len(test)}
    builders = {
        "zero_shot": lambda: zero_shot_prompts(model, test, template=template),
        "icl": lambda: icl_prompts(model, test, train, shots=shots, seed=seed),
        "instruction": lambda: instruction_prompts(model, task, test, seed=seed,
                                                   template=template),
    }
    unknown = set(modes) - set(builders)
    if unknown:
        raise ValueError(f"unknown baseline modes {sorted(unknown)}; choose from {list(builders)}")
    for mode in tqdm(modes, desc=f"baseline {task.name}", disable=not progress, leave=False):
        if mode == "instruction" and not task.instructions:
            continue
        result = evaluate(model, builders[mode](), batch_size=batch_size, targets=targets)
        out.update(result.summary(prefix=f"{mode}_"))
    out["n_multi_token_targets"] = target_ids(model, [p.output for p in test.pairs],
                                              template=template)[1]
    return out
