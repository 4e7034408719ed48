"""Scoring prompt/answer rows under per-item steering edits, from one cache of the unedited
prompts.

An analogy evaluation scores the same rows (every choice ``Q: C_j\\nA:`` followed by ``D_j``;
every stem ``Q: A\\nA:`` followed by B) under many conditions: no vector, each bank vector
alone, composites. A ``RowScorer`` builds the rows' ``SuffixCache`` once (the prefix keys and
values below the lowest edited layer), and each condition runs only the edit position and the
answer tokens through the blocks above it. Rows belong to items (``owner``); an edit gives one
vector per item and layer, and every row of an item gets its item's vector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from fvlens.modeltype import Model

from fvlens.batch import DEFAULT_TEMPLATE
from fvlens.relational.answers import AnswerScores, answer_batch, score_answers
from fvlens.relational.items import AnalogyItem
from fvlens.relational.suffix import SuffixCache

__all__ = ["RowScorer", "choice_scorer", "stem_scorer"]


class RowScorer:
    """Rows ``prompt + answer`` owned by items, scored under per-item edits.

    Args:
        prompts / answers: one per row.
        owner: the item of each row.
        start: the lowest block any edit will change (``min(layer) + 1``).
    """

    def __init__(self, model: Model, prompts: Sequence[str], answers: Sequence[str],
                 owner: Sequence[int], *, start: int):
        self.model = model
        self.batch = answer_batch(model, prompts, answers, target="full")
        self.cache = SuffixCache(model, self.batch, start)
        self.owner = torch.as_tensor(list(owner), dtype=torch.long)
        self.n_items = int(self.owner.max()) + 1 if len(self.owner) else 0

    def rows_of(self, items: Sequence[int] | None) -> list[int]:
        """The rows of ``items`` (all rows for None), in row order."""
        if items is None:
            return list(range(len(self.owner)))
        keep = set(int(i) for i in items)
        return [r for r, o in enumerate(self.owner.tolist()) if o in keep]

    def scores(self, edits: Mapping[int, Float[Tensor, "n_items d_model"] | Tensor] | None = None,
               *, items: Sequence[int] | None = None) -> tuple[list[int], AnswerScores]:
        """Scores of the rows of ``items`` with ``edits[L]`` (``[n_items, d_model]``, or
        ``[d_model]`` for all) added at ``blocks.{L}.hook_resid_post`` of each row's edit
        position; keeps the autograd graph (``row_nll``).

        Returns:
            ``(rows, scores)``: the scored rows in order and their ``AnswerScores``.
        """
        rows = self.rows_of(items)
        per_row = {}
        for layer, e in (edits or {}).items():
            per_row[layer] = e if e.ndim == 1 else e[self.owner.to(e.device)]
        groups = self.cache.resume(per_row, rows=rows)
        local = {r: i for i, r in enumerate(rows)}
        logits, ids, tokens = [], [], []
        for batch_rows, lg in zip(*groups):
            for j, r in enumerate(batch_rows.tolist()):
                answer = self.batch.answers[r]
                logits.append(lg[j, :len(answer)])
                ids += [local[r]] * len(answer)
                tokens += list(answer)
        order = sorted(range(len(ids)), key=lambda k: (ids[k], k))
        idx = torch.tensor(order)
        return rows, score_answers(torch.cat(logits)[idx], torch.tensor(ids)[idx],
                                   torch.tensor(tokens)[idx], len(rows))


def _prompt(x: str, demo: tuple[str, str] | None) -> str:
    t = DEFAULT_TEMPLATE
    head = (t.query.format(x=demo[0]) + t.answer_prefix + demo[1] + t.demo_suffix) if demo else ""
    return head + t.query.format(x=x)


def choice_scorer(model: Model, items: Sequence[AnalogyItem], *, start: int,
                  demo: bool = False) -> RowScorer:
    """Every choice ``(C_j, D_j)`` of every item as ``Q: C_j\\nA:`` + ``D_j``; with ``demo``
    the stem is the prompt's one demonstration (``Q: A\\nA: B\\n\\n`` first)."""
    prompts, answers, owner = [], [], []
    for i, it in enumerate(items):
        for c, d in it.choices:
            prompts.append(_prompt(c, it.stem if demo else None))
            answers.append(d)
            owner.append(i)
    return RowScorer(model, prompts, answers, owner, start=start)


def stem_scorer(model: Model, items: Sequence[AnalogyItem], *, start: int
                ) -> RowScorer:
    """Every item's stem as ``Q: A\\nA:`` + ``B`` (what composite weights are fitted on)."""
    return RowScorer(model, [_prompt(it.stem[0], None) for it in items],
                     [it.stem[1] for it in items], list(range(len(items))), start=start)
