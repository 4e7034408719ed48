"""Reading AttnLRP relevance: activation × gradient under the rules, at any hook point.

The backward pass is seeded with 1 on the raw target logit at the last position; the model's
parameters are frozen for the call and the input embeddings made leaves, so nothing
accumulates and nothing is left behind.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from fvlens.backend import input_hook_names, pass_on
from fvlens.forward import final_logits, ranks_of, run_to
from fvlens.hooks import HookList, check_hook_names, frozen_parameters
from fvlens.attnlrp.rules import attnlrp_hooks
from fvlens.modeltype import Model

__all__ = ["BatchRelevance", "Relevance", "explain", "explain_batch", "relevance_at"]

INPUT_HOOKS = ("hook_embed", "hook_pos_embed")  # those the model has: backend.input_hook_names


def _leaf_hook(x: Tensor, hook: HookPoint) -> Tensor:
    return x.detach().requires_grad_(True)


def _position_dim(hook_name: str) -> int:
    """The query-position axis of a hook point's activation (-2 for ``[b, h, q, k]``)."""
    return -2 if hook_name.endswith(("hook_pattern", "hook_attn_scores")) else 1


@dataclass(frozen=True)
class _Traced:
    """What one forward + backward under the rules read (all detached)."""

    logits: Tensor  # [batch] raw target logits at the last position
    ranks: Tensor  # [batch] rank of each target there (0 = top-1), same rule as ranks_of
    acts: dict[str, Tensor]
    grads: dict[str, Tensor]


def _forward_backward(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    targets: Int[Tensor, "batch"],
    hook_names: Sequence[str],
    attention_mask: Int[Tensor, "batch pos"] | None,
    extra_hooks: HookList,
    rules: bool = True,
    last_only: Collection[str] = (),
) -> _Traced:
    """Forward under the rules, backward from the raw target logits at the last position.

    Only the last position is unembedded. For the hook points in ``last_only`` only the last
    query position is read: the hook splits that slice off (a copy, whose gradient autograd
    returns) and concatenates it back, so the value passed on is bit-exact and neither the
    full activation's gradient nor a second reference to the activation is kept.

    Returns:
        ``_Traced`` with activations and gradients at ``hook_names`` (for ``last_only`` names
        the last position only, the axis kept with size 1); an activation is the tensor a hook
        point passes downstream (after the rules and ``extra_hooks``).
    """
    if tokens.shape[0] != targets.shape[0]:
        raise ValueError(f"{tokens.shape[0]} prompts but {targets.shape[0]} targets")
    unknown = set(last_only) - set(hook_names)
    if unknown:
        raise ValueError(f"last_only names {sorted(unknown)} are not among hook_names")
    acts: dict[str, Tensor] = {}

    def read(name: str):  # filed under the name asked for (a bridge's hook.name differs)
        def fn(x: Tensor, hook: HookPoint) -> Tensor | None:
            if name not in last_only:
                acts[name] = x
                return pass_on(x, hook)  # on the gradient path on both backends
            dim = _position_dim(name)
            n = x.shape[dim]
            last = x.narrow(dim, n - 1, 1).clone()
            acts[name] = last
            return torch.cat([x.narrow(dim, 0, n - 1), last], dim=dim)

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
        resid = run_to(model, tokens, mask)
        logits = final_logits(model, resid[:, -1])  # [batch, d_vocab]
        rows = torch.arange(tokens.shape[0], device=logits.device)
        target_logits = logits[rows, targets.to(logits.device)]
        with torch.no_grad():
            ranks = ranks_of(logits, targets)
        del logits, resid
        missing = [n for n in hook_names if n not in acts]
        if missing:
            raise ValueError(f"hook points {missing} did not fire in this forward pass")
        needs = [n for n in hook_names if acts[n].requires_grad]
        grads = torch.autograd.grad(
            target_logits.sum(), [acts[n] for n in needs], allow_unused=True
        )
    grad_of = {n: g for n, g in zip(needs, grads) if g is not None}
    for n in hook_names:
        if n not in grad_of:
            grad_of[n] = torch.zeros_like(acts[n])
    return _Traced(logits=target_logits.detach(), ranks=ranks.cpu(),
                   acts={n: a.detach() for n, a in acts.items()}, grads=grad_of)


def _trace(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    targets: Int[Tensor, "batch"],
    hook_names: Sequence[str],
    attention_mask: Int[Tensor, "batch pos"] | None,
    extra_hooks: HookList,
    rules: bool = True,
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """(target logits [batch], activations, gradients) at ``hook_names``, every position."""
    t = _forward_backward(model, tokens, targets, hook_names, attention_mask, extra_hooks, rules)
    return t.logits, t.acts, t.grads


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
    evenly between the pattern and the values. ``rank`` is the target's rank among the
    logits at the last position (0 = top-1; the number of tokens with a larger logit).
    """

    tokens: Float[Tensor, "pos"]
    attention: Float[Tensor, "n_layers n_heads pos"]
    heads: Float[Tensor, "n_layers n_heads"]
    logit: float
    target: int
    rank: int
    str_tokens: list[str] | None


@dataclass(frozen=True, kw_only=True)
class BatchRelevance:
    """``Relevance`` for a left-padded batch: every field with a leading batch dimension."""

    tokens: Float[Tensor, "batch pos"]
    attention: Float[Tensor, "batch n_layers n_heads pos"]
    heads: Float[Tensor, "batch n_layers n_heads"]
    logits: Float[Tensor, "batch"]
    targets: Int[Tensor, "batch"]
    ranks: Int[Tensor, "batch"]
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
            rank=int(self.ranks[i]),
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
        (the last query's row of each pattern), heads [batch, n_layers, n_heads], and each
        target's rank at the last position from the same forward (``ranks < 5`` is head
        scoring's top-5 filter, with no extra forward).

    Memory: only the last query row of each pattern and the last position of each ``hook_z``
    are read, and only the last position is unembedded; what remains is the activations
    autograd saves for the backward pass.
    """
    if tokens.dim() != 2 or (attention_mask is not None and attention_mask.shape != tokens.shape):
        raise ValueError(f"explain_batch takes tokens [batch, pos] (and an attention mask of "
                         f"the same shape), got {tuple(tokens.shape)}; for one prompt use "
                         "explain")
    n = model.cfg.n_layers
    inputs = input_hook_names(model)
    patterns = [f"blocks.{i}.attn.hook_pattern" for i in range(n)]
    zs = [f"blocks.{i}.attn.hook_z" for i in range(n)]
    t = _forward_backward(model, tokens, targets, inputs + patterns + zs, attention_mask, [],
                          last_only=patterns + zs)
    rel = {k: _times(t.acts[k], t.grads[k]) for k in t.acts}
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
        logits=t.logits.to(attention.dtype).cpu(),
        targets=targets.cpu(),
        ranks=t.ranks,
        str_tokens=str_tokens,
    )


def _target_id(model: Model, target: str | int) -> int:
    vocab = model.cfg.d_vocab_out
    if isinstance(target, int) and not isinstance(target, bool):
        if not 0 <= target < vocab:
            raise ValueError(f"target id {target} is outside the vocabulary [0, {vocab})")
        return target
    if not isinstance(target, str):
        raise ValueError(f"target must be a token id (int) or text (str), got "
                         f"{type(target).__name__}")
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer: pass the target as a token id (int)")
    ids = model.to_tokens(target, prepend_bos=False)[0]
    if len(ids) == 0:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    if len(ids) > 1:
        pieces = [model.tokenizer.decode([int(i)]) for i in ids]
        warnings.warn(f"target {target!r} is {len(ids)} tokens {pieces}; only the first, "
                      f"{pieces[0]!r}, is explained", stacklevel=3)
    return int(ids[0])


def _prompt_tokens(model: Model, prompt: str | Tensor,
                   prepend_bos: bool | None) -> Tensor:
    """One prompt as ``[1, pos]`` token ids, from text, ``[pos]`` or ``[1, pos]``."""
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise ValueError("the model has no tokenizer: pass the prompt as token ids")
        tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
    elif isinstance(prompt, Tensor):
        if prompt.dtype not in (torch.int32, torch.int64) or prompt.dim() not in (1, 2):
            raise ValueError(f"a token prompt is an integer tensor [pos] or [1, pos], got "
                             f"{prompt.dtype} of shape {tuple(prompt.shape)}")
        if prompt.dim() == 2 and prompt.shape[0] != 1:
            raise ValueError(f"explain takes one prompt; for {prompt.shape[0]} prompts call "
                             "explain_batch(model, tokens, targets, attention_mask=...)")
        tokens = prompt.reshape(1, -1)
    else:
        raise ValueError(f"prompt must be text or a token tensor, got {type(prompt).__name__}")
    if tokens.shape[1] == 0:
        raise ValueError("the prompt is empty (and the model adds no BOS): nothing to explain")
    return tokens


def explain(
    model: Model,
    prompt: str | Int[Tensor, "*prompt"],
    target: str | int,
    *,
    prepend_bos: bool | None = None,
) -> Relevance:
    """AttnLRP explanation of the raw logit of ``target`` after ``prompt``.

    Args:
        model: the model.
        prompt: text (tokenized with the model's tokenizer) or token ids, ``[pos]`` or
            ``[1, pos]`` (what ``model.to_tokens`` returns); for several prompts use
            ``explain_batch``.
        target: token id, or text whose first token (tokenized without BOS) is the target
            (a multi-token target warns: only its first token is explained).
        prepend_bos: for a text prompt; None uses the model's default.

    Returns:
        Relevance of the prompt's tokens, last-query attention weights and heads.
    """
    tokens = _prompt_tokens(model, prompt, prepend_bos)
    targets = torch.tensor([_target_id(model, target)])
    return explain_batch(model, tokens, targets)[0]
