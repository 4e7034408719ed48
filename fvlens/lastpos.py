"""Steered evaluations that recompute only the last token: the prefix's keys and values kept once.

A function vector (FV or DFV) edits only the last position, and attention is causal, so no
earlier position changes under the edit: every layer's keys and values of the prefix are those
of the unsteered pass. ``last_token_cache`` runs each prompt's prefix once into a frozen
TransformerLens key/value cache and records the last token's residual entering every block;
``steered_last`` then runs only the last token from block ``start`` up, attending to the cached
prefix (the same exact shortcut as the fast AIE path, ``fvlens.heads.aie``). A layer sweep
costs one token per prompt and layer instead of the whole prompt; the results equal a full
forward pass with the same edit (tested against ``fvlens.injection.steered_evaluation``).
Rows sharing a long prefix (a chat template's system turn) run it once (``fvlens.prefix``).
"""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Float
from torch import Tensor
from fvlens.modeltype import Model
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from fvlens.backend import is_bridge
from fvlens.batch import PromptBatch, auto_batch_size, pad_left
from fvlens.evaluation import Evaluation, evaluation_from_logits
from fvlens.forward import check_length, final_logits, token_budget
from fvlens.hooks import HookList, check_hook_names, hook_name
from fvlens.injection import ResidualCache, residual_cache, steered_evaluation
from fvlens.prefix import MIN_SHARED, shared_cache, sharable

__all__ = ["LastTokenCache", "last_token_cache", "steered_last", "StepCache", "step_cache", "steered"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LastTokenCache:
    """A batch's prefix keys/values and its last token's residual before every block.

    Attributes:
        batch: the prompts.
        chunks: the row chunks the pass ran in.
        kv: per chunk, the frozen key/value cache of every position but the last.
        masks: per chunk, the attention mask of the cached layout (shared prefix first when
            the rows share one, else the chunk's own left-padded mask).
        resid: per chunk ``[n_layers + 1, rows, 1, d_model]``: index L is the last token's
            residual entering block L (index ``n_layers``: the final norm's input).
        unsteered: the batch's evaluation without any edit.
    """

    batch: PromptBatch
    chunks: tuple[PromptBatch, ...]
    kv: tuple[TransformerLensKeyValueCache, ...]
    masks: tuple[Tensor, ...]
    resid: tuple[Tensor, ...]
    unsteered: Evaluation

    def check(self, batch: PromptBatch) -> None:
        if batch is not self.batch:
            raise ValueError("this last-token cache was built for another batch; pass "
                             "last_token_cache(model, batch) of the batch you evaluate")


@torch.no_grad()
def last_token_cache(model: Model, batch: PromptBatch, *,
                     batch_size: int | None = None) -> LastTokenCache:
    """One unsteered pass over ``batch``: the prefix into key/value caches, then the last token.

    Raises:
        ValueError: a prompt of a single token (there is no prefix to cache) or one longer
            than the model's context.
    """
    if batch.tokens.shape[1] < 2:
        raise ValueError("last_token_cache needs prompts of at least 2 tokens (a prefix to "
                         "cache); use fvlens.injection.residual_cache")
    check_length(model, batch.tokens.shape[1])
    n, device = model.cfg.n_layers, model.cfg.device
    chunks = batch.chunks(auto_batch_size(batch, batch_size,
                                          tokens_per_pass=token_budget(model)))
    kvs, masks, resids, logits = [], [], [], []
    for chunk in chunks:
        kv, tokens, mask = _prefix_cache(model, chunk)
        kv.freeze()
        store: list[Tensor | None] = [None] * (n + 1)

        def grab(x: Tensor, hook, *, _store=store) -> None:
            _store[hook.layer() + 1 if hook.name.endswith("hook_resid_post") else
                   hook.layer()] = x.detach()

        hooks = [(hook_name("resid_pre", layer), grab) for layer in range(n)]
        hooks.append((hook_name("resid_post", n - 1), grab))
        with model.hooks(fwd_hooks=hooks):
            model(tokens[:, -1:], attention_mask=mask[:, -1:], past_kv_cache=kv,
                  stop_at_layer=n)
        stacked = torch.stack(store)  # type: ignore[arg-type]
        kvs.append(kv)
        masks.append(mask)
        resids.append(stacked)
        logits.append(final_logits(model, stacked[-1][:, -1]).float().cpu())
    return LastTokenCache(batch=batch, chunks=tuple(chunks), kv=tuple(kvs), masks=tuple(masks),
                          resid=tuple(resids),
                          unsteered=evaluation_from_logits(torch.cat(logits), batch.targets))


def _prefix_cache(model: Model, chunk: PromptBatch):
    """The key/value cache of every position but the last, with the layout's tokens and mask
    (the shared prefix run once when the rows share ``MIN_SHARED`` tokens)."""
    device = model.cfg.device
    shared = sharable(model, chunk)
    if shared >= MIN_SHARED:
        kv = shared_cache(model, chunk, shared)
        tokens, mask = pad_left([r[shared:] for r in
                                 (chunk.row_ids(i) for i in range(len(chunk)))], chunk.pad_id)
        tokens = torch.cat([torch.as_tensor(chunk.row_ids(0)[:shared])[None].expand(
            len(chunk), -1), tokens], 1)
        mask = torch.cat([torch.ones(len(chunk), shared, dtype=mask.dtype), mask], 1)
        tokens, mask = tokens.to(device), mask.to(device)
        if tokens.shape[1] - 1 > shared:
            kv.unfreeze()
            model(tokens[:, shared:-1], attention_mask=mask[:, shared:-1], past_kv_cache=kv,
                  return_type=None)
        return kv, tokens, mask
    tokens, mask = chunk.tokens.to(device), chunk.attention_mask.to(device)
    kv = TransformerLensKeyValueCache.init_cache(model.cfg, device, batch_size=len(chunk))
    model(tokens[:, :-1], attention_mask=mask[:, :-1], past_kv_cache=kv, return_type=None)
    return kv, tokens, mask


@torch.no_grad()
def steered_last(model: Model, cache: LastTokenCache, *, start: int,
                 vector: Float[Tensor, " d_model"] | None = None,
                 fwd_hooks: HookList = ()) -> Evaluation:
    """Evaluate the cached batch with an edit of the last position acting from block ``start``.

    Args:
        start: the first block to run again (the last token's residual entering it comes from
            the cache).
        vector: added to that residual (``FunctionVector(vector).hooks(start - 1)``).
        fwd_hooks: hooks of blocks ``start ..`` that edit the last position only (a DFV whose
            lowest head is in block ``start``); they see the last token alone.
    """
    n = model.cfg.n_layers
    if not 0 <= start <= n:
        raise ValueError(f"start must be in [0, {n}], got {start}")
    check_hook_names(model, fwd_hooks)
    logits = []
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for kv, mask, resid in zip(cache.kv, cache.masks, cache.resid):
            x = resid[start]
            if vector is not None:
                x = x + vector.to(device=x.device, dtype=x.dtype)
            if start < n:
                x = model(x, start_at_layer=start, stop_at_layer=n, past_kv_cache=kv,
                          attention_mask=mask)
            logits.append(final_logits(model, x[:, -1]).float().cpu())
    return evaluation_from_logits(torch.cat(logits), cache.batch.targets)


StepCache = LastTokenCache | ResidualCache
"""What steered sweeps of one batch run on (``step_cache``)."""


def step_cache(model: Model, batch: PromptBatch) -> StepCache:
    """The cache for steering ``batch`` many times: the last-token cache on a
    HookedTransformer; on a TransformerBridge, whose key/value cache is Hugging Face's, the
    residual stream between blocks (``fvlens.injection.residual_cache``). ``steered`` takes
    either; both equal full forward passes with the same edit."""
    return residual_cache(model, batch) if is_bridge(model) else last_token_cache(model, batch)


def steered(model: Model, cache: StepCache, *, start: int,
            vector: Float[Tensor, " d_model"] | None = None,
            fwd_hooks: HookList = ()) -> Evaluation:
    """``steered_last`` or ``fvlens.injection.steered_evaluation``, whichever ``cache`` is for
    (the same arguments and result)."""
    run = steered_last if isinstance(cache, LastTokenCache) else steered_evaluation
    return run(model, cache, start=start, vector=vector, fwd_hooks=list(fwd_hooks))
