"""Generation with a function vector: steer the prompt once, then let the model continue.

A function vector (``FunctionVector`` / ``DistributedFV``) is an edit of the prompt's last
position, the token whose next-token prediction the vector was extracted for (Todd et al.
2024, Section 3: the FV is added to the hidden state at the final token of the prompt). So
``generate`` applies the vector's hooks during the forward pass over the prompt only; the
tokens it generates attend to the steered prompt states but get no edit of their own.

Two paths give the same tokens:

- ``use_cache=True``: one forward pass over the prompt with the hooks (filling the key/value
  cache: TransformerLens's own, or Hugging Face's on a bridge), then one unhooked pass per new
  token.
- ``use_cache=False``: every step re-runs the whole sequence, with the hooks restricted to the
  prompt's positions (``restrict_to_prompt``): a hook sees exactly the prompt-length activation
  it sees in the cached path, so the last position it edits is the prompt's last token.

Batches are left-padded (the prompt's last token sits at the same column in every row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from fvlens.backend import KVCache, kv_forward
from fvlens.hooks import HookFn, HookList, check_hook_names
from fvlens.batch import pad_left
from fvlens.modeltype import Model
from fvlens.prompts import pad_token_id, tokenize
from fvlens.steering import DistributedFV, FunctionVector

__all__ = [
    "Generation",
    "generate",
    "generate_tokens",
    "restrict_to_prompt",
    "side_by_side",
    "vector_hooks",
]

Vector = FunctionVector | DistributedFV | HookList | None

# Hooks whose activation is [batch, head, query_pos, key_pos]; all others have pos at dim 1.
_PATTERN_SUFFIXES = ("hook_pattern", "hook_attn_scores")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Generation:
    """Tokens and logits of one ``generate_tokens`` call.

    Attributes:
        prompt_tokens: the left-padded prompts.
        attention_mask: 1 for real prompt tokens, 0 for padding.
        tokens: the generated tokens; after a row's EOS (with ``stop_at_eos``) the row holds EOS.
        logits: the logits each generated token was chosen from (float32, on the CPU).
        finished: whether the row produced EOS.
    """

    prompt_tokens: Int[Tensor, "batch prompt_pos"]
    attention_mask: Int[Tensor, "batch prompt_pos"]
    tokens: Int[Tensor, "batch new"]
    logits: Float[Tensor, "batch new vocab"]
    finished: Bool[Tensor, " batch"]

    def continuations(self, model: Model, *, stop_at_eos: bool = True) -> list[str]:
        """Decoded generated tokens of every row, cut before the first EOS when ``stop_at_eos``."""
        eos = model.tokenizer.eos_token_id
        out = []
        for row in self.tokens.tolist():
            if stop_at_eos and eos is not None and eos in row:
                row = row[:row.index(eos)]
            out.append(model.tokenizer.decode(row))
        return out


def restrict_to_prompt(hooks: Sequence[tuple[str, HookFn]], n_prompt: int) -> HookList:
    """Hooks that act on the first ``n_prompt`` positions only.

    Each hook function is called on the slice ``x[:, :n_prompt]`` (``x[:, :, :n_prompt,
    :n_prompt]`` for attention patterns and scores), so an edit of "the last position"
    (``x[:, -1]``) lands on the prompt's last token however long the sequence has grown.
    Causal attention makes the prompt's activations independent of later tokens, so the
    slice equals the activation the hook sees in a prompt-only forward pass.

    Args:
        hooks: a hook list.
        n_prompt: the (padded) prompt length.
    """
    if n_prompt < 1:
        raise ValueError(f"n_prompt must be at least 1, got {n_prompt}")
    return [(name, _restricted(fn, n_prompt, name.endswith(_PATTERN_SUFFIXES)))
            for name, fn in hooks]


def _restricted(fn: HookFn, n: int, pattern: bool) -> HookFn:
    def hook(x: Tensor, hook) -> Tensor | None:
        part = x[:, :, :n, :n] if pattern else x[:, :n]
        new = fn(part, hook=hook)
        if new is None or new is part:  # edited in place through the view
            return None
        x = x.clone()
        if pattern:
            x[:, :, :n, :n] = new
        else:
            x[:, :n] = new
        return x

    return hook


def generate(
    model: Model,
    prompt: str | list[str],
    vector: Vector = None,
    *,
    max_new_tokens: int = 20,
    layer: int | None = None,
    scale: float = 1.0,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    stop_at_eos: bool = True,
    use_cache: bool = True,
) -> list[str]:
    """Continue each prompt, with ``vector`` added at the prompt's last position.

    Args:
        model: the model (it needs a tokenizer).
        prompt: one prompt or a list; BOS is added when the model expects one.
        vector: a ``FunctionVector``, a ``DistributedFV``, any hook list (applied to the prompt's
            forward pass only), or None for unsteered generation.
        max_new_tokens: tokens to generate per prompt.
        layer: injection layer of a ``FunctionVector`` (default: its own ``.layer``).
        scale: multiplier of the vector.
        do_sample: sample from ``softmax(logits / temperature)`` instead of taking the argmax.
        temperature: sampling temperature (> 0).
        seed: seeds the sampling.
        stop_at_eos: stop a row at the tokenizer's EOS token (the EOS is not returned).
        use_cache: use TransformerLens's key/value cache (same tokens, faster).

    Returns:
        The continuations (without the prompt), one string per prompt, also for a single str.
    """
    gen = generate_tokens(model, prompt, vector, max_new_tokens=max_new_tokens, layer=layer,
                          scale=scale, do_sample=do_sample, temperature=temperature, seed=seed,
                          stop_at_eos=stop_at_eos, use_cache=use_cache)
    return gen.continuations(model, stop_at_eos=stop_at_eos)


@torch.no_grad()
def generate_tokens(
    model: Model,
    prompt: str | list[str],
    vector: Vector = None,
    *,
    max_new_tokens: int = 20,
    layer: int | None = None,
    scale: float = 1.0,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    stop_at_eos: bool = True,
    use_cache: bool = True,
) -> Generation:
    """``generate``, returning tokens and per-step logits instead of strings (same arguments)."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}; "
                         "use do_sample=False for greedy decoding")
    hooks = vector_hooks(vector, layer=layer, scale=scale)
    check_hook_names(model, hooks)
    tokens, mask = _pad_left(model, [prompt] if isinstance(prompt, str) else list(prompt))
    eos = model.tokenizer.eos_token_id
    if stop_at_eos and eos is None:
        raise ValueError("the tokenizer has no EOS token; pass stop_at_eos=False")
    n_batch, n_prompt = tokens.shape
    if n_prompt + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(f"prompt ({n_prompt} tokens) + max_new_tokens ({max_new_tokens}) "
                         f"exceeds the model's context of {model.cfg.n_ctx}; shorten one")

    device = model.cfg.device
    tokens, mask = tokens.to(device), mask.to(device)
    generator = torch.Generator(device=device).manual_seed(seed) if do_sample else None
    kv: KVCache | None = None
    step_hooks = restrict_to_prompt(hooks, n_prompt) if hooks and not use_cache else []
    new_tokens: list[Tensor] = []
    step_logits: list[Tensor] = []
    finished = torch.zeros(n_batch, dtype=torch.bool, device=device)
    ones = torch.ones(n_batch, 1, dtype=mask.dtype, device=device)

    for step in range(max_new_tokens):
        if step == 0:
            with model.hooks(fwd_hooks=list(hooks)):
                if use_cache:
                    logits, kv = kv_forward(model, tokens, mask)
                    logits = logits[:, -1]
                else:
                    logits = model(tokens, attention_mask=mask)[:, -1]
        elif use_cache:
            logits, kv = kv_forward(model, new_tokens[-1][:, None], ones, kv)
            logits = logits[:, -1]
        else:
            seq = torch.cat([tokens, torch.stack(new_tokens, dim=1)], dim=1)
            full_mask = torch.cat([mask, ones.expand(-1, step)], dim=1)
            with model.hooks(fwd_hooks=step_hooks):
                logits = model(seq, attention_mask=full_mask)[:, -1]
        logits = logits.float()
        if do_sample:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            nxt = logits.argmax(-1)
        if stop_at_eos:
            nxt = torch.where(finished, torch.full_like(nxt, eos), nxt)
            finished |= nxt == eos
        new_tokens.append(nxt)
        step_logits.append(logits.cpu())
        if stop_at_eos and bool(finished.all()):
            break

    vocab = model.cfg.d_vocab_out
    return Generation(
        prompt_tokens=tokens.cpu(), attention_mask=mask.cpu(),
        tokens=torch.stack(new_tokens, 1).cpu() if new_tokens
        else torch.zeros(n_batch, 0, dtype=torch.long),
        logits=torch.stack(step_logits, 1) if step_logits else torch.zeros(n_batch, 0, vocab),
        finished=finished.cpu(),
    )


def vector_hooks(vector: Vector, *, layer: int | None = None, scale: float = 1.0) -> HookList:
    """The hook list of a steering vector (see ``generate`` for the arguments)."""
    if isinstance(vector, FunctionVector):
        return vector.hooks(layer, scale=scale)
    if layer is not None:
        raise ValueError(f"layer={layer} applies to a FunctionVector only, not "
                         f"{type(vector).__name__}")
    if isinstance(vector, DistributedFV):
        return vector.hooks(scale=scale)
    if scale != 1.0:
        raise ValueError(f"scale={scale} applies to a FunctionVector or DistributedFV only; "
                         "scale the edit inside your hook list")
    return [] if vector is None else list(vector)


def side_by_side(model: Model, prompt: str, vector: Vector, **kw) -> dict:
    """The unsteered and steered continuations of one prompt.

    Args:
        kw: ``generate``'s keyword arguments; ``layer`` and ``scale`` go to the steered run only.

    Returns:
        ``{"prompt": prompt, "unsteered": str, "steered": str}``.
    """
    plain = {k: v for k, v in kw.items() if k not in ("layer", "scale")}
    return {
        "prompt": prompt,
        "unsteered": generate(model, prompt, None, **plain)[0],
        "steered": generate(model, prompt, vector, **kw)[0],
    }


def _pad_left(model: Model,
              prompts: list[str]) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    if not prompts:
        raise ValueError("no prompts to generate from")
    rows = [tokenize(model, p)[0] for p in prompts]
    for p, r in zip(prompts, rows):
        if not r:
            raise ValueError(f"prompt {p!r} tokenizes to nothing (and the model adds no BOS)")
    return pad_left(rows, pad_token_id(model))
