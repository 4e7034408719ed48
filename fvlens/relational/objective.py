"""What fine-tuning optimises and measures: a split's prompts and answers, scored with a vector.

``ScoredSplit`` holds one split's zero-shot prompts ``Q: {x}\\nA:`` with their answers
(``fvlens.relational.answers``) and the keys and values of everything before the edit
(``fvlens.relational.suffix``): an edit at the prompt's last token changes nothing before it,
so each training step and each validation runs only the blocks above the edit, on the last
token and the answer (the same result as a full forward pass with ``vector.hooks()``,
tested). ``score_vector`` scores any vector on any pairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from fvlens.modeltype import Model

from fvlens.forward import forward_last
from fvlens.hooks import HookList, hook_name
from fvlens.prompts import DEFAULT_TEMPLATE, PromptBatch
from fvlens.relational.answers import AnswerScores, answer_batch, score_answers
from fvlens.relational.suffix import SuffixCache
from fvlens.steering import DistributedFV, FunctionVector
from fvlens.tasks import Pair

__all__ = ["Vector", "ScoredSplit", "score_vector", "grad_last_logits", "residual_scale",
           "with_value", "value_of"]

Vector = FunctionVector | DistributedFV


def grad_last_logits(model: Model, tokens: Int[Tensor, "batch pos"],
                     attention_mask: Int[Tensor, "batch pos"], fwd_hooks: HookList
                     ) -> Float[Tensor, "batch vocab"]:
    """Last-position logits with ``fwd_hooks`` applied and autograd on (unlike ``last_logits``).

    Args:
        tokens: left-padded token ids.
        attention_mask: 1 for real tokens.
        fwd_hooks: hook list (removed before returning; the graph stays).
    """
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        return forward_last(model, tokens, attention_mask).float()


@torch.no_grad()
def residual_scale(model: Model, batch: PromptBatch, *, layer: int | None = None,
                   heads: Sequence[tuple[int, int]] = ()) -> float:
    """Per-coordinate RMS of the last-token activation a vector is added to.

    Args:
        batch: the prompts (left-padded).
        layer: for an FV: RMS over ``blocks.{layer}.hook_resid_post[:, -1]``.
        heads: for a DFV: RMS over ``blocks.{L}.attn.hook_z[:, -1, h]`` of the given heads.
    """
    if (layer is None) == (not heads):
        raise ValueError("give exactly one of layer= (FV) or heads= (DFV)")
    names = ([hook_name("resid_post", layer)] if layer is not None
             else sorted({hook_name("z", a) for a, _ in heads}))
    last = layer if layer is not None else max(a for a, _ in heads)
    _, cache = model.run_with_cache(batch.tokens.to(model.cfg.device),
                                    attention_mask=batch.attention_mask.to(model.cfg.device),
                                    names_filter=lambda n: n in names, stop_at_layer=last + 1)
    if layer is not None:
        x = cache[names[0]][:, -1].float()
    else:
        x = torch.cat([cache[hook_name("z", a)][:, -1, b].float() for a, b in heads], -1)
    return float(x.pow(2).mean().sqrt())


def with_value(vector: Vector, value: Tensor) -> Vector:
    """The same vector (layer, heads) with another value."""
    if isinstance(vector, FunctionVector):
        return dataclasses.replace(vector, vector=value)
    return dataclasses.replace(vector, means=value)


def value_of(vector: Vector) -> Tensor:
    """An FV's ``vector`` or a DFV's ``means``."""
    return vector.vector if isinstance(vector, FunctionVector) else vector.means


class ScoredSplit:
    """One split's zero-shot prompts and answers, with the unedited prefix cached below the
    edit (``fvlens.relational.suffix``).

    Args:
        pairs: the split's pairs.
        target: "first" or "full" (see ``fvlens.relational.answers``).
        start: the first block an edit changes: ``layer + 1`` for an FV at ``layer``, the
            lowest head layer for a DFV.
    """

    def __init__(self, model: Model, pairs: Sequence[Pair], target: str, *,
                 start: int):
        q = DEFAULT_TEMPLATE.query
        self.model, self.target = model, target
        self.batch = answer_batch(model, [q.format(x=p.input) for p in pairs],
                                  [p.output for p in pairs], target=target)
        self.suffix = SuffixCache(model, self.batch, start)

    def __len__(self) -> int:
        return len(self.batch)

    def scores(self, vector: Vector, value: Tensor, rows: Sequence[int] | None = None
               ) -> AnswerScores:
        """Scores of ``vector`` with its value replaced by ``value`` (may require grad), on
        all rows or on ``rows`` (in that order)."""
        if isinstance(vector, FunctionVector):
            groups = self.suffix.resume({vector.layer: value}, rows=rows)
        else:  # a DFV edits each row's last position: the suffix is that one token
            with self.model.hooks(fwd_hooks=with_value(vector, value).hooks()):
                groups = self.suffix.resume(rows=rows)
        order = list(range(len(self.batch))) if rows is None else [int(r) for r in rows]
        local = {r: i for i, r in enumerate(order)}
        logits, row_ids, tokens = [], [], []
        for batch_rows, lg in zip(*groups):
            n = lg.shape[1] if self.target == "full" else 1
            for j, r in enumerate(batch_rows.tolist()):
                answer = self.batch.answers[r]
                logits.append(lg[j, :n])
                row_ids += [local[r]] * n
                tokens += list(answer[:n])
        # score_answers needs each row's tokens together, first token first
        order_idx = sorted(range(len(row_ids)), key=lambda k: (row_ids[k], k))
        flat = torch.cat(logits)[torch.tensor(order_idx)]
        return score_answers(flat, torch.tensor(row_ids)[order_idx],
                             torch.tensor(tokens)[order_idx], len(order))


def _start(vector: Vector, model: Model) -> int:
    return vector.layer + 1 if isinstance(vector, FunctionVector) else vector.first_layer(model)


def score_vector(model: Model, vector: Vector, pairs: Sequence[Pair], *,
                 target: str = "first") -> AnswerScores:
    """Zero-shot scores of ``pairs`` with ``vector`` applied (no gradient)."""
    split = ScoredSplit(model, pairs, target, start=_start(vector, model))
    with torch.no_grad():
        return split.scores(vector, value_of(vector).to(model.cfg.device))
