"""Reading AttnLRP relevance: activation × gradient under the rules, at any hook point.

The backward pass is seeded with 1 on the raw target logit at the last position; the model's
parameters are frozen for the call and the input embeddings made leaves, so nothing
accumulates and nothing is left behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from fvlens.backend import input_hook_names, pass_on
from fvlens.hooks import HookList, check_hook_names, frozen_parameters
from fvlens.lrp.rules import attnlrp_hooks
from fvlens.modeltype import Model

__all__ = ["BatchRelevance", "Relevance", "explain", "explain_batch", "relevance_at"]

INPUT_HOOKS = ("hook_embed", "hook_pos_embed")  # those the model has: backend.input_hook_names


def _leaf_hook(x: Tensor, hook: HookPoint) -> Tensor:
    return x.detach().requires_grad_(True)


def _trace(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    targets: Int[Tensor, "batch"],
    hook_names: Sequence[str],
    attention_mask: Int[Tensor, "batch pos"] | None,
    extra_hooks: HookList,
    rules: bool = True,
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Forward under the rules, backward from the raw target logits at the last position.

    Returns (target logits [batch], activations, gradients) at ``hook_names``; the activation
    is the tensor a hook point passes downstream (after the rules and ``extra_hooks``).
    """
    if tokens.shape[0] != targets.shape[0]:
        raise ValueError(f"{tokens.shape[0]} prompts but {targets.shape[0]} targets")
    acts: dict[str, Tensor] = {}

    def read(name: str):  # filed under the name asked for (a bridge's hook.name differs)
        def fn(x: Tensor, hook: HookPoint) -> Tensor | None:
            acts[name] = x
            return pass_on(x, hook)  # on the gradient path on both backends

        return fn

    leaves = [(n, _leaf_hook) for n in input_hook_names(model)]
    readers = [(n, read(n)) for n in hook_names]
    check_hook_names(model, readers)
    rule_hooks = attnlrp_hooks(model) if rules else []
    # A bridge's norm rule records each norm's input: after every edit of it.
    late = [h for h in rule_hooks if getattr(h[1], "records_input", False)]
    rule_hooks = [h for h in rule_hooks if not getattr(h[1], "records_input", False)]
    fwd = leaves + rule_hooks + list(extra_hooks) + readers + late
    device = model.cfg.device
    tokens = tokens.to(device)
    mask = attention_mask.to(device) if attention_mask is not None else None
    with frozen_parameters(model), torch.enable_grad(), model.hooks(fwd_hooks=fwd):
        logits = model(tokens, attention_mask=mask) if mask is not None else model(tokens)
        rows = torch.arange(tokens.shape[0], device=logits.device)
        target_logits = logits[rows, -1, targets.to(logits.device)]
        missing = [n for n in hook_names if n not in acts]
        if missing:
            raise ValueError(f"hook points {missing} did not fire in this forward pass")
        needs = [n for n in hook_names if acts[n].requires_grad]
        grads = torch.autograd.grad(
            target_logits.sum(), [acts[n] for n in needs], allow_unused=True
        )
    grad_of = {n: torch.zeros_like(acts[n]) for n in hook_names}
    for n, g in zip(needs, grads):
        if g is not None:
            grad_of[n] = g
    return target_logits.detach(), {n: a.detach() for n, a in acts.items()}, grad_of


def _times(act: Tensor, grad: Tensor) -> Tensor:
    """activation × gradient in float32 (float64 for float64 models); 0 where act is ±inf."""
    dtype = torch.float64 if act.dtype == torch.float64 else torch.float32
    product = act.to(dtype) * grad.to(dtype)
    return torch.where(torch.isfinite(act), product, torch.zeros_like(product))


def relevance_at(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    targets: Int[Tensor, "batch"],
    hook_names: Sequence[str],
    *,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    extra_hooks: HookList | None = None,
) -> dict[str, Tensor]:
    """AttnLRP relevance (activation × gradient under the rules) at any hook points.

    Args:
        model: the model (parameters and hooks left as they were).
        tokens: left-padded prompts; the explained logit is at the last position.
        targets: the token whose raw logit each prompt explains.
        hook_names: hook points to read, e.g. ``"blocks.3.attn.hook_z"``.
        attention_mask: 1 for real tokens, 0 for left padding.
        extra_hooks: the caller's own hooks, applied after the rules and before reading.

    Returns:
        ``{hook_name: relevance}``, each the shape of the activation, float32 (float64 for
        float64 models), zero where the activation is ±inf (masked attention scores).
    """
    _, acts, grads = _trace(
        model, tokens, targets, hook_names, attention_mask, list(extra_hooks or [])
    )
    return {n: _times(acts[n], grads[n]) for n in hook_names}


@dataclass(frozen=True, kw_only=True)
class Relevance:
    """AttnLRP explanation of one raw target logit at the last position.

    ``tokens`` is the complete input relevance: ``hook_embed`` plus ``hook_pos_embed`` where the
    model has learned positions. ``heads`` is the relevance reaching each head's output
    (``hook_z`` × its incoming gradient, last position); the uniform rule then splits it
    evenly between the pattern and the values.
    """

    tokens: Float[Tensor, "pos"]
    attention: Float[Tensor, "n_layers n_heads pos"]
    heads: Float[Tensor, "n_layers n_heads"]
    logit: float
    target: int
    str_tokens: list[str] | None


@dataclass(frozen=True, kw_only=True)
class BatchRelevance:
    """``Relevance`` for a left-padded batch: every field with a leading batch dimension."""

    tokens: Float[Tensor, "batch pos"]
    attention: Float[Tensor, "batch n_layers n_heads pos"]
    heads: Float[Tensor, "batch n_layers n_heads"]
    logits: Float[Tensor, "batch"]
    targets: Int[Tensor, "batch"]
    str_tokens: list[list[str]] | None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int) -> Relevance:
        return Relevance(
            tokens=self.tokens[i],
            attention=self.attention[i],
            heads=self.heads[i],
            logit=float(self.logits[i]),
            target=int(self.targets[i]),
            str_tokens=self.str_tokens[i] if self.str_tokens is not None else None,
        )


def explain_batch(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    targets: Int[Tensor, "batch"],
    *,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> BatchRelevance:
    """AttnLRP relevance of tokens, attention weights and heads for a batch of prompts.

    Args:
        model: the model.
        tokens: left-padded prompts (the last real token at position -1).
        targets: target token ids, one per prompt.
        attention_mask: 1 for real tokens, 0 for padding; None when nothing is padded.

    Returns:
        BatchRelevance with tokens [batch, pos], attention [batch, n_layers, n_heads, pos]
        (the last query's row of each pattern), heads [batch, n_layers, n_heads].
    """
    n = model.cfg.n_layers
    inputs = input_hook_names(model)
    patterns = [f"blocks.{i}.attn.hook_pattern" for i in range(n)]
    zs = [f"blocks.{i}.attn.hook_z" for i in range(n)]
    logits, acts, grads = _trace(
        model, tokens, targets, inputs + patterns + zs, attention_mask, []
    )
    rel = {k: _times(acts[k], grads[k]) for k in acts}
    token_rel = sum(rel[h].sum(-1) for h in inputs)
    attention = torch.stack([rel[p][:, :, -1, :] for p in patterns], dim=1)
    heads = torch.stack([rel[z][:, -1].sum(-1) for z in zs], dim=1)
    str_tokens = None
    if model.tokenizer is not None:
        str_tokens = [list(model.to_str_tokens(row)) for row in tokens]
    return BatchRelevance(
        tokens=token_rel.cpu(),
        attention=attention.cpu(),
        heads=heads.cpu(),
        logits=logits.to(attention.dtype).cpu(),
        targets=targets.cpu(),
        str_tokens=str_tokens,
    )


def _target_id(model: Model, target: str | int) -> int:
    if isinstance(target, int):
        return target
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer: pass the target as a token id (int)")
    ids = model.to_tokens(target, prepend_bos=False)[0]
    if len(ids) == 0:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    return int(ids[0])


def explain(
    model: Model,
    prompt: str | Int[Tensor, "pos"],
    target: str | int,
    *,
    prepend_bos: bool | None = None,
) -> Relevance:
    """AttnLRP explanation of the raw logit of ``target`` after ``prompt``.

    Args:
        model: the model.
        prompt: text (tokenized with the model's tokenizer) or token ids [pos].
        target: token id, or text whose first token (tokenized without BOS) is the target.
        prepend_bos: for a text prompt; None uses the model's default.

    Returns:
        Relevance of the prompt's tokens, last-query attention weights and heads.
    """
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise ValueError("the model has no tokenizer: pass the prompt as token ids")
        tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
    else:
        tokens = prompt.unsqueeze(0)
    targets = torch.tensor([_target_id(model, target)])
    return explain_batch(model, tokens, targets)[0]

