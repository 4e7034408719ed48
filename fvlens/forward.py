"""The forward core: every forward pass of fvlens goes through these four functions.

- ``run_to``: tokens → the residual stream after the first ``layer`` blocks (all by default:
  the input of the final norm).
- ``resume``: a recorded residual stream → the residual after more blocks (TransformerLens
  ``start_at_layer``), so a sweep can share the pass below the layer it edits.
- ``final_logits``: final norm + unembedding + output soft-cap of any residual ``[..., d_model]``
  (the one place fvlens turns a residual into logits; the model's own ``forward`` does the same).
- ``forward_last``: ``final_logits(run_to(...)[:, -1])``, the logits of the last position of a
  left-padded batch (each row's last real token).

``map_chunks`` runs any of these over a ``PromptBatch`` in chunks sized by a token budget and
halves the chunk once per out-of-memory error instead of failing. Hooks are the caller's:
whatever ``model.hooks(...)`` context is open applies; nothing here adds hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from fvlens.batch import TOKENS_PER_PASS, PromptBatch, auto_batch_size

__all__ = ["run_to", "resume", "final_logits", "forward_last", "map_chunks", "ranks_of",
           "check_length", "token_budget"]

T = TypeVar("T")


def _mask(model: HookedTransformer, attention_mask: Tensor | None) -> Tensor | None:
    return None if attention_mask is None else attention_mask.to(model.cfg.device)


def run_to(model: HookedTransformer, tokens: Int[Tensor, "batch pos"],
           attention_mask: Int[Tensor, "batch pos"] | None = None, *,
           layer: int | None = None) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream after blocks ``0 .. layer-1`` (``hook_resid_pre`` of ``layer``).

    Args:
        tokens: token ids (left-padded when ``attention_mask`` is given).
        attention_mask: 1 for real tokens, 0 for padding.
        layer: how many blocks to run; None runs all of them (the final norm's input).
    """
    stop = model.cfg.n_layers if layer is None else layer
    check_length(model, tokens.shape[-1])
    return model(tokens.to(model.cfg.device), attention_mask=_mask(model, attention_mask),
                 stop_at_layer=stop)


def check_length(model: HookedTransformer, n_tokens: int) -> None:
    """Raise a ValueError when a prompt of ``n_tokens`` exceeds the model's context."""
    if n_tokens > model.cfg.n_ctx:
        raise ValueError(f"a prompt of {n_tokens} tokens exceeds the model's context of "
                         f"{model.cfg.n_ctx} tokens; use fewer shots or shorter prompts")


def resume(model: HookedTransformer, resid: Float[Tensor, "batch pos d_model"], *,
           start: int, attention_mask: Int[Tensor, "batch pos"] | None = None,
           stop: int | None = None) -> Float[Tensor, "batch pos d_model"]:
    """Run blocks ``start .. stop-1`` on a residual stream (``hook_resid_pre`` of ``start``).

    Args:
        resid: the residual entering block ``start`` (e.g. a recorded ``resid_post`` of
            ``start - 1``, possibly edited).
        start: first block to run; ``start == stop`` returns ``resid`` unchanged.
        attention_mask: the batch's mask (TransformerLens cannot infer it from a residual).
        stop: block to stop before; None runs to the last block.
    """
    stop = model.cfg.n_layers if stop is None else stop
    if start >= stop:
        return resid
    return model(resid, start_at_layer=start, stop_at_layer=stop,
                 attention_mask=_mask(model, attention_mask))


def final_logits(model: HookedTransformer, resid: Float[Tensor, "*rows d_model"]
                 ) -> Float[Tensor, "*rows d_vocab"]:
    """Final norm, unembedding and output soft-cap of a residual stream of any leading shape.

    The same computation as the end of ``HookedTransformer.forward`` (so ``ln_final``'s and
    ``unembed``'s hook points fire), applied only to the rows given: pass ``resid[:, -1]`` to
    unembed one position instead of all. Keeps the autograd graph, device and dtype.
    """
    from transformer_lens.utilities.activation_functions import apply_softcap

    shape = resid.shape
    x = resid.reshape(-1, 1, shape[-1]).to(model.W_U.device)
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    logits = apply_softcap(model.unembed(x), model.cfg.output_logits_soft_cap)
    return logits.reshape(*shape[:-1], logits.shape[-1])


def forward_last(model: HookedTransformer, tokens: Int[Tensor, "batch pos"],
                attention_mask: Int[Tensor, "batch pos"] | None = None
                ) -> Float[Tensor, "batch d_vocab"]:
    """Logits at the last position of every row (left-padded batches: the last real token)."""
    return final_logits(model, run_to(model, tokens, attention_mask)[:, -1])


def ranks_of(logits: Float[Tensor, "batch vocab"], targets: Int[Tensor, " batch"]
             ) -> Int[Tensor, " batch"]:
    """0-based rank of each target in its row of logits: how many logits are strictly above
    the target's (a tie does not push the target down)."""
    target_logit = logits.gather(1, targets[:, None].to(logits.device))
    return (logits > target_logit).sum(-1)


def token_budget(model: HookedTransformer) -> int:
    """Tokens per forward pass: ``TOKENS_PER_PASS`` on the CPU; on a GPU, what a quarter of its
    free memory holds at an estimated cost per token (every layer's residual kept in float32,
    plus the widest activations of one block in the model's dtype)."""
    device = torch.device(model.cfg.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return TOKENS_PER_PASS
    free, _ = torch.cuda.mem_get_info(device)
    cfg = model.cfg
    width = max(cfg.d_model, cfg.d_mlp or 0, cfg.n_heads * cfg.d_head)
    per_token = 4 * (cfg.n_layers + 1) * cfg.d_model + 4 * model.W_U.element_size() * width
    return int(min(1 << 17, max(TOKENS_PER_PASS, 0.25 * free / per_token)))


def map_chunks(batch: PromptBatch, fn: Callable[[PromptBatch], T], *,
               batch_size: int | None = None, tokens_per_pass: int = TOKENS_PER_PASS
               ) -> list[T]:
    """``fn`` over consecutive chunks of ``batch``, one result per chunk.

    Args:
        batch: the prompts.
        fn: called with each chunk (a ``PromptBatch``).
        batch_size: rows per chunk; None sizes chunks by ``tokens_per_pass``
            (``fvlens.batch.auto_batch_size``; ``token_budget(model)`` adapts it to a GPU's
            free memory). On an out-of-memory error the chunk is halved and retried, down to one
            row.
    """
    size = auto_batch_size(batch, batch_size, tokens_per_pass=tokens_per_pass)
    out: list[T] = []
    start = 0
    while start < len(batch):
        chunk = batch.select(range(start, min(start + size, len(batch))))
        try:
            out.append(fn(chunk))
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start += len(chunk)
    return out
