"""Scoring whole answers: every token of ``" " + answer`` after a prompt, with a vector added at
the prompt's last position.

First-token top-1 (``fvlens.evaluate``) is the measure of the function-vector literature, but a
relation word such as ``" whiskers"`` may be several tokens, and its first token may be a
fragment that other words share. An ``AnswerBatch`` holds ``prompt + answer[:-1]`` per row
(left-padded), the position of the prompt's last token (``edit``: where a function vector acts)
and the answer's tokens. ``answer_logits`` gives the logits that predict each answer token;
``score_answers`` turns them into the summed log-probability, the first-token top-1 and the
exact match of the whole answer (every token the top-1 given the ones before: what greedy
decoding would write). The edit is made at ``edit`` only, as in generation, where the answer's
tokens see it through attention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from fvlens.modeltype import Model

from fvlens.batch import DEFAULT_TEMPLATE, Template, pad_left
from fvlens.forward import final_logits, ranks_of, run_to
from fvlens.hooks import hook_name
from fvlens.prompts import pad_token_id, tokenize

__all__ = ["AnswerBatch", "AnswerScores", "answer_batch", "answer_logits", "score_answers",
           "add_rows_at_positions", "TARGETS"]

TARGETS = ("first", "full")


def add_rows_at_positions(vectors: Tensor, positions: Tensor):
    """Hook function adding ``vectors[b]`` at ``positions[b]`` of row b of the residual.

    Args:
        vectors: ``[batch, d_model]`` (may require grad), or ``[d_model]`` for every row.
        positions: ``[batch]`` position per row (padded coordinates; -1 = the last).
    """

    def hook(x: Tensor, hook) -> Tensor:
        x = x.clone()
        rows = torch.arange(x.shape[0], device=x.device)
        v = vectors.to(device=x.device, dtype=x.dtype)
        x[rows, positions.to(x.device)] += v.expand(x.shape[0], -1) if v.ndim == 1 else v
        return x

    return hook


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnswerBatch:
    """Prompts followed by their answers, left-padded.

    Attributes:
        tokens: ``prompt + answer[:-1]`` per row (the last answer token is only predicted).
        attention_mask: 1 for real tokens.
        edit: per row, the position of the prompt's last token (it predicts the first answer
            token, and a function vector is added there).
        answers: per row, the answer's token ids (``template.answer_prefix + answer``).
    """

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    edit: Int[Tensor, " batch"]
    answers: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        if self.edit.shape != (n,) or len(self.answers) != n:
            raise ValueError(f"AnswerBatch has {n} rows but {tuple(self.edit.shape)} edit "
                             f"positions and {len(self.answers)} answers")
        if any(not a for a in self.answers):
            raise ValueError("every answer needs at least one token")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def first(self) -> Int[Tensor, " batch"]:
        """The first answer token of every row."""
        return torch.tensor([a[0] for a in self.answers], dtype=torch.long)

    def select(self, rows: Sequence[int]) -> AnswerBatch:
        """The given rows (same width; padding columns are masked)."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return AnswerBatch(tokens=self.tokens[idx], attention_mask=self.attention_mask[idx],
                           edit=self.edit[idx], answers=tuple(self.answers[int(i)] for i in idx))

    def targets(self, *, target: str) -> tuple[Tensor, Tensor, Tensor]:
        """Flattened ``(row, position, token)`` of the predicted tokens: every answer token
        (``target="full"``) or only the first (``"first"``)."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        rows, pos, tok = [], [], []
        for i, a in enumerate(self.answers):
            for t, token in enumerate(a if target == "full" else a[:1]):
                rows.append(i)
                pos.append(int(self.edit[i]) + t)
                tok.append(token)
        return (torch.tensor(rows, dtype=torch.long), torch.tensor(pos, dtype=torch.long),
                torch.tensor(tok, dtype=torch.long))


def answer_batch(model: Model, prompts: Sequence[str], answers: Sequence[str], *,
                 template: Template = DEFAULT_TEMPLATE, target: str = "full") -> AnswerBatch:
    """Tokenize prompts and answers (``template.answer_prefix + answer``) into an AnswerBatch.

    Args:
        prompts: the prompt texts (BOS is added where the model expects one).
        answers: one answer per prompt.
        target: "first" keeps only each answer's first token (the prompt alone is run).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    tok = model.tokenizer
    rows, ans = [], []
    for p, a in zip(prompts, answers):
        ids = tok(template.answer_prefix + a, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"answer {a!r} tokenizes to nothing")
        ids = ids if target == "full" else ids[:1]
        rows.append(tokenize(model, p)[0] + ids[:-1])
        ans.append(tuple(ids))
    tokens, mask = pad_left(rows, pad_token_id(model))
    width = tokens.shape[1]
    edit = torch.tensor([width - len(a) for a in ans], dtype=torch.long)
    return AnswerBatch(tokens=tokens, attention_mask=mask, edit=edit, answers=tuple(ans))


def answer_logits(model: Model, batch: AnswerBatch, *, target: str = "full",
                  vector: Tensor | None = None, layer: int | None = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Logits predicting the answer tokens (one full forward pass), with ``vector`` added at
    ``blocks.{layer}.hook_resid_post`` at each row's ``edit`` position (hooks the caller
    opened also apply). ``fvlens.relational.suffix`` computes the same from a cache.

    Args:
        vector: ``[d_model]`` or ``[batch, d_model]``; None for no edit.
        layer: the block whose output gets the vector.

    Returns:
        ``(logits [n_tokens, vocab], rows [n_tokens], tokens [n_tokens])`` for the flattened
        predicted tokens (see ``AnswerBatch.targets``). Keeps the autograd graph.
    """
    rows, pos, tok = batch.targets(target=target)
    if vector is not None and layer is None:
        raise ValueError("a vector needs the layer it is added at")
    hooks = [] if vector is None else [(hook_name("resid_post", layer),
                                        add_rows_at_positions(vector, batch.edit))]
    with model.hooks(fwd_hooks=hooks):
        x = run_to(model, batch.tokens, batch.attention_mask)
    logits = final_logits(model, x[rows.to(x.device), pos.to(x.device)]).float()
    return logits, rows, tok


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnswerScores:
    """Per row: summed log-probability, first-token top-1 and rank, whole-answer exact match.

    ``row_nll`` is each row's negative log-likelihood with its autograd graph (what
    fine-tuning minimises); ``nll`` their mean."""

    logprob: Float[Tensor, " batch"]
    first_top1: Bool[Tensor, " batch"]
    exact: Bool[Tensor, " batch"]
    row_nll: Float[Tensor, " batch"]
    first_rank: Int[Tensor, " batch"]

    @property
    def nll(self) -> Tensor:
        return self.row_nll.mean()

    def correct(self, target: str) -> Bool[Tensor, " batch"]:
        """Exact match for ``"full"``, first-token top-1 for ``"first"``."""
        return self.exact if target == "full" else self.first_top1


def score_answers(logits: Float[Tensor, "n_tokens vocab"], rows: Int[Tensor, " n_tokens"],
                  tokens: Int[Tensor, " n_tokens"], n_rows: int) -> AnswerScores:
    """Row scores from flattened per-token logits (``answer_logits``' output); each row's
    tokens must be consecutive, first token first. Keeps the graph in ``row_nll``."""
    logp = logits.log_softmax(-1)
    tok_lp = logp.gather(1, tokens[:, None].to(logp.device))[:, 0]
    rows = rows.to(logp.device)
    per_row = torch.zeros(n_rows, device=logp.device, dtype=tok_lp.dtype).index_add(0, rows, tok_lp)
    hit = (logits.argmax(-1) == tokens.to(logits.device)).detach()
    wrong = torch.zeros(n_rows, device=logp.device).index_add(0, rows, (~hit).float())
    first = torch.ones(len(rows), dtype=torch.bool, device=logp.device)
    first[1:] = rows[1:] != rows[:-1]
    first_top1 = torch.zeros(n_rows, dtype=torch.bool, device=logp.device)
    first_top1[rows[first]] = hit[first]
    first_rank = torch.zeros(n_rows, dtype=torch.long, device=logp.device)
    first_rank[rows[first]] = ranks_of(logits[first].detach(), tokens[first].to(logits.device))
    return AnswerScores(logprob=per_row.detach().cpu(), first_top1=first_top1.cpu(),
                        exact=(wrong == 0).cpu(), row_nll=-per_row, first_rank=first_rank.cpu())
