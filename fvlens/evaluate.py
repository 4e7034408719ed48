"""First-token evaluation: top-k accuracy and target rank, with or without a hook list.

``last_logits`` runs a batch in chunks and unembeds only the last position (every prompt
batch is left-padded, so that is each row's last real token). ``evaluate`` turns logits into
accuracy; ``baseline`` measures the zero-shot, ICL and instruction baselines of a task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.HookedTransformer import apply_softcap

from fvlens.hooks import HookFn
from fvlens.prompts import PromptBatch, icl_prompts, instruction_prompts, zero_shot_prompts
from fvlens.tasks import Task

__all__ = ["Evaluation", "last_logits", "evaluate", "baseline", "layer_sweep",
           "resume_with_vector", "DEFAULT_BATCH_SIZE"]

DEFAULT_BATCH_SIZE = None  # automatic: as many rows as fit TOKENS_PER_PASS
TOKENS_PER_PASS = 1600


def auto_batch_size(batch: PromptBatch, batch_size: int | None) -> int:
    """``batch_size`` if given, else rows of ``batch``'s width that fit ``TOKENS_PER_PASS``
    (between 4 and 64): short zero-shot prompts run in few passes, long ICL ones in more."""
    if batch_size is not None:
        return batch_size
    return max(4, min(64, TOKENS_PER_PASS // max(1, batch.tokens.shape[1])))


@torch.no_grad()
def last_logits(model: HookedTransformer, batch: PromptBatch, *,
                fwd_hooks: Sequence[tuple[str, HookFn]] = (),
                batch_size: int | None = DEFAULT_BATCH_SIZE) -> Float[Tensor, "batch vocab"]:
    """Logits at the last position of every row, with ``fwd_hooks`` applied.

    Args:
        model: the model.
        batch: left-padded prompts.
        fwd_hooks: a hook list applied during the forward passes (removed afterwards).
        batch_size: rows per forward pass.
    """
    out = []
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for chunk in batch.chunks(auto_batch_size(batch, batch_size)):
            out.append(_forward_last(model, chunk.tokens, chunk.attention_mask))
    return torch.cat(out)


def _forward_last(model: HookedTransformer, tokens: Tensor, mask: Tensor) -> Tensor:
    device = model.cfg.device
    resid = model(tokens.to(device), attention_mask=mask.to(device),
                  stop_at_layer=model.cfg.n_layers)
    return _unembed_last(model, resid)


def _unembed_last(model: HookedTransformer, resid: Tensor) -> Tensor:
    """Logits of the last position of a final residual stream ``[batch, pos, d_model]``."""
    resid = resid[:, -1:, :]
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    logits = apply_softcap(model.unembed(resid), model.cfg.output_logits_soft_cap)
    return logits[:, 0].float().cpu()


@torch.no_grad()
def layer_sweep(model: HookedTransformer, batch: PromptBatch, vector: Float[Tensor, " d_model"],
                *, layers: Sequence[int] | None = None, scale: float = 1.0,
                batch_size: int | None = DEFAULT_BATCH_SIZE) -> dict[int, Evaluation]:
    """Evaluate ``scale * vector`` added at the last position of each layer's
    ``hook_resid_post`` (what ``FunctionVector.hooks(layer)`` does), sharing the unsteered
    pass below the layer: one recorded forward, then each layer's upper part only.

    Returns:
        ``{layer: Evaluation}``.
    """
    n = model.cfg.n_layers
    layers = list(range(n)) if layers is None else list(layers)
    device = model.cfg.device
    logits: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    for chunk in batch.chunks(auto_batch_size(batch, batch_size)):
        tokens, mask = chunk.tokens.to(device), chunk.attention_mask.to(device)
        rec: dict[int, Tensor] = {}

        def keep(x: Tensor, hook) -> None:
            rec[hook.layer()] = x

        with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_post", keep)
                                    for layer in layers]):
            model(tokens, attention_mask=mask, stop_at_layer=max(layers) + 1)
        for layer in layers:
            logits[layer].append(resume_with_vector(model, rec[layer], layer, scale * vector,
                                                    mask))
    return {layer: evaluation_from_logits(torch.cat(v), batch.targets)
            for layer, v in logits.items()}


def resume_with_vector(model: HookedTransformer, resid: Float[Tensor, "batch pos d_model"],
                       layer: int, vector: Float[Tensor, " d_model"],
                       attention_mask: Tensor) -> Float[Tensor, "batch d_vocab"]:
    """Last-position logits after adding ``vector`` at the last position of a recorded
    ``blocks.{layer}.hook_resid_post`` and running only the blocks above ``layer``.

    Equal to a forward pass with ``FunctionVector(vector, layer).hooks()``: the blocks up to
    ``layer`` do not see the vector, so a recorded residual can stand in for them.
    """
    x = resid.clone()
    x[:, -1] += vector.to(device=x.device, dtype=x.dtype)
    n = model.cfg.n_layers
    if layer + 1 < n:
        x = model(x, start_at_layer=layer + 1, stop_at_layer=n,
                  attention_mask=attention_mask.to(x.device))
    return _unembed_last(model, x)


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


def ranks_of(logits: Float[Tensor, "batch vocab"], targets: Int[Tensor, " batch"]
             ) -> Int[Tensor, " batch"]:
    """0-based rank of each target in its row (ties count against the target)."""
    target_logit = logits.gather(1, targets[:, None])
    return (logits > target_logit).sum(-1)


def evaluate(model: HookedTransformer, batch: PromptBatch, *,
             fwd_hooks: Sequence[tuple[str, HookFn]] = (),
             batch_size: int | None = DEFAULT_BATCH_SIZE) -> Evaluation:
    """Top-k accuracy and target rank of ``batch`` under ``fwd_hooks``."""
    logits = last_logits(model, batch, fwd_hooks=fwd_hooks, batch_size=batch_size)
    return evaluation_from_logits(logits, batch.targets)


def evaluation_from_logits(logits: Float[Tensor, "batch vocab"],
                           targets: Int[Tensor, " batch"]) -> Evaluation:
    probs = logits.float().softmax(-1)
    return Evaluation(ranks=ranks_of(logits, targets), predictions=logits.argmax(-1),
                      target_probs=probs.gather(1, targets[:, None])[:, 0])


def baseline(model: HookedTransformer, task: Task, *, shots: int = 10, n_test: int | None = 50,
             seed: int = 0, test_fraction: float = 0.3,
             modes: Sequence[str] = ("zero_shot", "icl", "instruction"),
             batch_size: int | None = DEFAULT_BATCH_SIZE, progress: bool = True) -> dict[str, float | int]:
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
    from fvlens.prompts import target_ids

    out["n_multi_token_targets"] = target_ids(model, [p.output for p in test.pairs])[1]
    return out
