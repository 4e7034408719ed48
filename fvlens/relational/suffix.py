"""Run only the positions an edit can change: the prompt's last token and the answer after it.

A vector added at position e of the residual stream changes nothing before e (causal
attention), so the keys and values of every earlier position are those of the unedited pass.
``SuffixCache`` computes them once per batch (TransformerLens's own key/value cache, frozen),
with the residual of the positions from e on entering block ``start``; ``SuffixCache.resume``
then runs blocks ``start ..`` on those few positions only, attending to the cached prefix,
with edits at any layers from ``start - 1`` up (one vector for all rows or one per row).
For a prompt of ten tokens and a one-token target that is a tenth of the work of a full
forward pass, per training step and per validation; the result equals the full pass with the
same edit (tested). Rows are grouped by how many positions they resume (the answer's length).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from fvlens.modeltype import Model
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from fvlens.forward import check_length, final_logits
from fvlens.hooks import hook_name
from fvlens.relational.answers import AnswerBatch

__all__ = ["SuffixCache"]


@dataclasses.dataclass(frozen=True)
class _Group:
    rows: Tensor                           # row indices into the batch
    cache: TransformerLensKeyValueCache    # the prefix's keys and values (frozen)
    mask: Tensor                           # attention mask of prefix + suffix
    resid: Tensor                          # [g, n, d_model] entering block ``start``


def _index(cache: TransformerLensKeyValueCache, idx: Tensor) -> TransformerLensKeyValueCache:
    entries = [TransformerLensKeyValueCacheEntry(past_keys=e.past_keys[idx],
                                                 past_values=e.past_values[idx], frozen=True)
               for e in cache.entries]
    return TransformerLensKeyValueCache(entries=entries, frozen=True,
                                        previous_attention_mask=cache.previous_attention_mask[idx])


class SuffixCache:
    """The unedited prefix of every row (keys/values) and its suffix entering block ``start``.

    Args:
        model: the model.
        batch: prompts and answers; each row's suffix runs from ``batch.edit`` to its end.
        start: the first block that will be run again (``layer + 1`` for an FV added at
            ``blocks.{layer}.hook_resid_post``; a DFV's lowest layer).
    """

    def __init__(self, model: Model, batch: AnswerBatch, start: int):
        if not 0 <= start <= model.cfg.n_layers:
            raise ValueError(f"start must be in [0, {model.cfg.n_layers}], got {start}")
        check_length(model, batch.tokens.shape[1])
        self.model, self.start, self.n_rows = model, start, len(batch)
        device = model.cfg.device
        width = batch.tokens.shape[1]
        lengths = [width - int(e) for e in batch.edit]
        self.groups: list[_Group] = []
        for n in sorted(set(lengths)):
            rows = torch.tensor([i for i, m in enumerate(lengths) if m == n], dtype=torch.long)
            tokens = batch.tokens[rows].to(device)
            mask = batch.attention_mask[rows].to(device)
            cache = TransformerLensKeyValueCache.init_cache(model.cfg, device,
                                                            batch_size=len(rows))
            with torch.no_grad():
                model(tokens[:, :-n], attention_mask=mask[:, :-n], past_kv_cache=cache,
                      return_type=None)
                cache.freeze()
                resid = model(tokens[:, -n:], attention_mask=mask[:, -n:], past_kv_cache=cache,
                              stop_at_layer=start)
            self.groups.append(_Group(rows=rows, cache=cache, mask=mask, resid=resid.detach()))

    def resume(self, edits: Mapping[int, Tensor] | None = None, *,
               rows: Sequence[int] | None = None
               ) -> tuple[list[Tensor], list[Float[Tensor, "g n vocab"]]]:
        """Logits of the suffix positions, with ``edits[L]`` added to ``blocks.{L}.
        hook_resid_post`` at each row's first suffix position (hooks the caller opened also
        apply).

        Args:
            edits: ``{layer: vector}``, each ``[d_model]`` for every row or ``[batch,
                d_model]`` per row of the batch (may require grad); every layer ≥
                ``start - 1``.
            rows: restrict to these rows of the batch (e.g. a training minibatch).

        Returns:
            ``(row_indices, logits)`` per group: ``logits[g][j, t]`` predicts the token after
            suffix position t of batch row ``row_indices[g][j]``.
        """
        edits = dict(edits or {})
        low = [layer for layer in edits if layer < self.start - 1]
        if low:
            raise ValueError(f"edits at layers {low} lie below this cache's start block "
                             f"{self.start}; build the SuffixCache with start ≤ {min(low) + 1}")
        keep = None if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
        out_rows, out_logits = [], []
        for g in self.groups:
            if keep is None:
                sel = torch.arange(len(g.rows))
            else:
                sel = torch.nonzero(torch.isin(g.rows, keep)).flatten()
                if not len(sel):
                    continue
            picked = {layer: (e if e.ndim == 1 else e[g.rows[sel].to(e.device)])
                      for layer, e in edits.items()}
            x = g.resid[sel]
            if self.start - 1 in picked:
                x = _add_first(x, picked.pop(self.start - 1))
            hooks = [(hook_name("resid_post", layer), _adder(e)) for layer, e in picked.items()]
            full = keep is None
            with self.model.hooks(fwd_hooks=hooks):
                x = self.model(x, start_at_layer=self.start,
                               stop_at_layer=self.model.cfg.n_layers,
                               attention_mask=g.mask if full else g.mask[sel],
                               past_kv_cache=g.cache if full else _index(g.cache, sel))
            out_rows.append(g.rows[sel])
            out_logits.append(final_logits(self.model, x).float())
        return out_rows, out_logits


def _add_first(x: Tensor, v: Tensor) -> Tensor:
    """``x`` with ``v`` added at suffix position 0 (the edit position) of every row."""
    x = x.clone()
    x[:, 0] = x[:, 0] + v.to(device=x.device, dtype=x.dtype)
    return x


def _adder(v: Tensor):
    def hook(x: Tensor, hook) -> Tensor:
        return _add_first(x, v)

    return hook
