"""Reading vectors through the unembedding: which tokens does a function vector promote?

``decode`` projects a residual-stream vector through ``ln_final`` and ``W_U`` (the logit lens
applied to the vector alone, as Todd et al. 2024 §3 do for FVs) and returns the top tokens
with their probabilities. ``relation_word_rank`` asks how high a task's ``relation_words``
("opposite", "past", …) rank in that distribution: Kang, Wu & Lu (2026) report that fine-tuned
vectors decode to relation words better than extracted ones. ``head_contributions`` decodes a
DFV head by head (``mean @ W_O[L, h]``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from fvlens.forward import final_logits
from fvlens.modeltype import Model
from fvlens.steering import DistributedFV, FunctionVector

__all__ = ["DecodedToken", "decode", "vector_logits", "relation_word_ids",
           "relation_word_rank", "head_contributions", "decode_heads", "dfv_residual"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodedToken:
    """One token of a decoded distribution."""

    token: str
    id: int
    prob: float
    rank: int


def _residual(vector: Float[Tensor, " d_model"] | FunctionVector) -> Tensor:
    return vector.vector if isinstance(vector, FunctionVector) else vector


@torch.no_grad()
def vector_logits(model: Model, vector: Float[Tensor, " d_model"] | FunctionVector
                  ) -> Float[Tensor, " vocab"]:
    """Logits of ``unembed(ln_final(vector))``.

    Args:
        vector: a ``[d_model]`` residual-stream vector or a FunctionVector.
    """
    v = _residual(vector).detach().to(model.cfg.device, model.cfg.dtype)
    if v.shape != (model.cfg.d_model,):
        raise ValueError(f"expected a [d_model={model.cfg.d_model}] vector, got {tuple(v.shape)};"
                         " decode a DFV with decode_heads or dfv_residual")
    return final_logits(model, v).float().cpu()


def decode(model: Model, vector: Float[Tensor, " d_model"] | FunctionVector, *,
           k: int = 10) -> list[DecodedToken]:
    """The ``k`` most probable tokens of the vector's unembedding.

    Args:
        vector: a ``[d_model]`` vector or a FunctionVector.
        k: how many tokens.

    Returns:
        ``k`` DecodedTokens, most probable first.
    """
    probs = vector_logits(model, vector).softmax(-1)
    top = probs.topk(min(k, probs.numel()))
    return [DecodedToken(token=model.tokenizer.decode([int(i)]) if model.tokenizer else str(int(i)),
                         id=int(i), prob=float(p), rank=r)
            for r, (p, i) in enumerate(zip(top.values, top.indices))]


def relation_word_ids(model: Model, words: Sequence[str]) -> dict[str, list[int]]:
    """Per word, the first token of ``" " + word`` and of ``word`` (deduplicated)."""
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; relation words cannot be tokenized")
    out = {}
    for w in words:
        ids = []
        for text in (" " + w, w):
            toks = model.tokenizer(text, add_special_tokens=False)["input_ids"]
            if toks and toks[0] not in ids:
                ids.append(int(toks[0]))
        out[w] = ids
    return out


def relation_word_rank(model: Model,
                       vector: Float[Tensor, " d_model"] | FunctionVector,
                       words: Sequence[str]) -> dict:
    """How high the relation words rank in the vector's decoded distribution.

    Args:
        vector: the vector to decode.
        words: the task's ``relation_words``.

    Returns:
        ``{"best_rank": int, "best_word": str, "ranks": {word: rank}}``: 0-based ranks of the
        best of each word's candidate tokens (ties count against the word).
    """
    if not words:
        raise ValueError("no relation words; add \"relation_words\" to the task's JSON file")
    logits = vector_logits(model, vector)
    ranks = {}
    for w, ids in relation_word_ids(model, words).items():
        ranks[w] = min(int((logits > logits[i]).sum()) for i in ids)
    best = min(ranks, key=ranks.get)
    return {"best_rank": ranks[best], "best_word": best, "ranks": ranks}


@torch.no_grad()
def head_contributions(model: Model, dfv: DistributedFV
                       ) -> Float[Tensor, "n_selected d_model"]:
    """Each DFV head's residual-stream contribution ``means[i] @ W_O[L, h]``."""
    rows = [dfv.means[i].float().cpu() @ model.blocks[a].attn.W_O[b].detach().float().cpu()
            for i, (a, b) in enumerate(dfv.heads)]
    return torch.stack(rows) if rows else torch.zeros(0, model.cfg.d_model)


def dfv_residual(model: Model, dfv: DistributedFV, *, scale: float = 1.0
                 ) -> Float[Tensor, " d_model"]:
    """The DFV summed into one residual vector (its FV equivalent, ignoring later layers)."""
    return scale * head_contributions(model, dfv).sum(0)


def decode_heads(model: Model, dfv: DistributedFV, *, k: int = 5,
                 words: Sequence[str] = ()) -> list[dict]:
    """Decode every head of a DFV: top tokens and, with ``words``, relation-word ranks.

    Returns:
        One ``{"head": (L, h), "norm": float, "top": [DecodedToken...], "relation": {...}}``
        per head, in the DFV's order.
    """
    out = []
    for head, v in zip(dfv.heads, head_contributions(model, dfv)):
        row: dict = {"head": tuple(head), "norm": float(v.norm()), "top": decode(model, v, k=k)}
        if words:
            row["relation"] = relation_word_rank(model, v, words)
        out.append(row)
    return out
