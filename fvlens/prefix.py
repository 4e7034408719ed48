"""Prompts that share a long prefix (a chat template's system turn): run the prefix once.

Every prompt in a chat template starts with the same tokens (Qwen2.5: about 20, half of a
short instruction prompt). ``forward_shared`` runs those tokens once for the whole chunk into a
frozen TransformerLens key/value cache and then only each row's own tokens, left-padded after
the prefix: row i is ``prefix | pad … | own tokens`` with the attention mask saying which are
real, and TransformerLens's positions (the running count of real tokens) are the same as in the
row's own left-padded layout. The results equal ``fvlens.forward.run_to`` on the batch (tested),
at the cost of the rows' own tokens only.

Hooks active during the call see only the rows' own tokens, so callers use it for unhooked
passes or for hooks that read or edit the last position; ``shared_prefix`` says when it pays
(a prefix of at least ``MIN_SHARED`` tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from fvlens.modeltype import Model
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from fvlens.backend import is_bridge
from fvlens.batch import PromptBatch, pad_left
from fvlens.forward import check_length
from fvlens.hooks import HookFn

__all__ = ["MIN_SHARED", "shared_prefix", "sharable", "shared_cache", "forward_shared"]

MIN_SHARED = 8  # shared tokens below which the plain pass is used


def shared_prefix(batch: PromptBatch) -> int:
    """Length of the longest token prefix all rows share, leaving every row ≥ 1 own token."""
    rows = [batch.row_ids(i) for i in range(len(batch))]
    first = rows[0]
    n = min(len(r) for r in rows) - 1
    for j in range(max(n, 0)):
        if any(r[j] != first[j] for r in rows[1:]):
            return j
    return max(n, 0)


def sharable(model: Model, batch: PromptBatch) -> int:
    """The prefix length ``forward_shared`` may run once for ``batch``: ``shared_prefix`` on a
    HookedTransformer; 0 on a TransformerBridge, whose key/value cache is Hugging Face's (its
    callers then take the plain pass)."""
    return 0 if is_bridge(model) else shared_prefix(batch)


def shared_cache(model: Model, batch: PromptBatch, n_shared: int
                 ) -> TransformerLensKeyValueCache:
    """A frozen key/value cache of the rows' first ``n_shared`` tokens, run once and shared
    (not copied) by every row."""
    device = model.cfg.device
    prefix = torch.as_tensor(batch.row_ids(0)[:n_shared], dtype=torch.long, device=device)[None]
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, batch_size=1)
    # An explicit mask: TransformerLens would otherwise guess padding from the pad token,
    # which a chat template may well contain (SmolLM2 pads with <|im_end|>).
    model(prefix, attention_mask=torch.ones_like(prefix), past_kv_cache=cache,
          return_type=None)
    for entry in cache.entries:
        entry.past_keys = entry.past_keys.expand(len(batch), *entry.past_keys.shape[1:])
        entry.past_values = entry.past_values.expand(len(batch), *entry.past_values.shape[1:])
    cache.previous_attention_mask = cache.previous_attention_mask.expand(len(batch), -1)
    cache.freeze()
    return cache


def forward_shared(model: Model, batch: PromptBatch, n_shared: int, *,
                   extra: Tensor | None = None, extra_mask: Tensor | None = None,
                   fwd_hooks: Sequence[tuple[str, HookFn]] = ()
                   ) -> Float[Tensor, "batch own d_model"]:
    """The final residual of each row's own tokens (and of ``extra`` tokens appended to every
    row, e.g. teacher-forced answers), the first ``n_shared`` tokens run once.

    Args:
        batch: the prompts; their first ``n_shared`` real tokens must be the same.
        n_shared: the shared prefix length (``shared_prefix(batch)`` or less).
        extra, extra_mask: ``[batch, m]`` tokens appended after each prompt (right-padded).
        fwd_hooks: hooks active during the pass over the rows' own tokens only.

    Returns:
        ``[batch, own + m, d_model]``: the rows' own tokens left-padded to a common width,
        then the extra tokens; position ``own - 1`` is each prompt's last token.
    """
    device = model.cfg.device
    ids = [batch.row_ids(i) for i in range(len(batch))]
    check_length(model, max(len(r) for r in ids) + (0 if extra is None else extra.shape[1]))
    cache = shared_cache(model, batch, n_shared)
    tokens, mask = pad_left([r[n_shared:] for r in ids], batch.pad_id)
    if extra is not None:
        tokens, mask = torch.cat([tokens, extra], 1), torch.cat([mask, extra_mask], 1)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        return model(tokens.to(device), attention_mask=mask.to(device), past_kv_cache=cache,
                     stop_at_layer=model.cfg.n_layers)
