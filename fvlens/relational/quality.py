"""Is a relation vector good enough to be compared? Validation top-1 against the ICL reference.

A relation vector is meant to make the model do its relation. Before its geometry is compared
with human judgments or mixed into a composite, ``VectorQuality`` records how well it does
that: its top-1 on the relation's validation queries (zero-shot prompt plus the vector) and
the **ICL reference**, the top-1 of ten-shot in-context prompts on the same queries
(demonstrations from the training pairs). A vector *passes* when its validation top-1 is at
least ``ratio`` × the ICL reference (default 0.5) and above zero: a vector that gets no
validation query right does not pass even where ICL gets none right either (then nothing shows
that it carries the relation). ``metric="top5"`` applies the same rule to first-token top-5.
``diagnose`` names, from the measurements, why one fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from fvlens.modeltype import Model

from fvlens.prompts import icl_prompts, target_ids
from fvlens.relational.answers import answer_batch, answer_logits, score_answers
from fvlens.tasks import Pair

__all__ = ["DEFAULT_PASS_RATIO", "METRICS", "VectorQuality", "icl_reference", "passes", "diagnose",
           "multi_token_share", "summarize"]

DEFAULT_PASS_RATIO = 0.5
METRICS = ("top1", "top5")


def passes(val_top1: float, icl_top1: float, ratio: float = DEFAULT_PASS_RATIO) -> bool:
    """``val_top1 ≥ ratio × icl_top1`` and ``val_top1 > 0``."""
    if not ratio >= 0:
        raise ValueError(f"the pass ratio must be ≥ 0, got {ratio}")
    return bool(val_top1 > 0 and val_top1 >= ratio * icl_top1 - 1e-9)


@torch.no_grad()
def icl_reference(model: Model, queries: Sequence[Pair],
                  demonstrations: Sequence[Pair], *, shots: int = 10, seed: int = 0) -> dict:
    """ICL top-1 on ``queries`` with demonstrations from ``demonstrations`` (one pass).

    Returns:
        ``{"first": first-token top-1, "first_top5", "full": whole-answer exact match, "n",
        "shots"}`` (fewer shots when there are fewer demonstrations).
    """
    k = min(shots, len(demonstrations) - 1)
    if k < 1:
        raise ValueError(f"an ICL reference needs ≥ 2 demonstrations, got {len(demonstrations)}")
    batch = icl_prompts(model, queries, demonstrations, shots=k, seed=seed)
    ab = answer_batch(model, list(batch.texts), [q.output for q in queries], target="full")
    sc = score_answers(*answer_logits(model, ab, target="full"), len(ab))
    return {"first": float(sc.first_top1.float().mean()),
            "first_top5": float((sc.first_rank < 5).float().mean()),
            "full": float(sc.exact.float().mean()), "n": len(queries), "shots": k}


@dataclasses.dataclass(frozen=True, kw_only=True)
class VectorQuality:
    """How well one relation vector does its relation.

    Attributes:
        name: the relation.
        layer: the vector's injection layer.
        target: "first" or "full" (what top-1 means below).
        val_top1 / icl_top1: the vector's and the ICL reference's top-1 on the validation
            queries.
        n_val: validation queries.
        ratio: the pass threshold's ratio.
        metric: what the pass rule compares: "top1" (default) or "top5" (the answer's first
            token among the five most probable: a graded measure for relations with many
            right answers, where top-1 of a handful of queries is mostly zero).
        val_top5 / icl_top5: first-token top-5 of the vector and of the ICL reference.
        train_top1: the vector's top-1 on its own training pairs.
        test_top1: on held-out test pairs (never used to choose anything), or None.
        details: other measurements (ICL first-token top-5, multi-token share, layer screen).
    """

    name: str
    layer: int | None
    target: str
    val_top1: float
    icl_top1: float
    n_val: int
    ratio: float = DEFAULT_PASS_RATIO
    metric: str = "top1"
    val_top5: float | None = None
    icl_top5: float | None = None
    train_top1: float | None = None
    test_top1: float | None = None
    details: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.metric == "top5" and (self.val_top5 is None or self.icl_top5 is None):
            raise ValueError("metric='top5' needs val_top5 and icl_top5")

    @property
    def val(self) -> float:
        """The vector's validation score under ``metric``."""
        return self.val_top1 if self.metric == "top1" else self.val_top5

    @property
    def icl(self) -> float:
        """The ICL reference under ``metric``."""
        return self.icl_top1 if self.metric == "top1" else self.icl_top5

    @property
    def passes(self) -> bool:
        return passes(self.val, self.icl, self.ratio)

    @property
    def reason(self) -> str:
        return diagnose(self)

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"passes": self.passes, "reason": self.reason}

    @classmethod
    def from_json(cls, d: dict) -> VectorQuality:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


# Below this share of its training pairs a vector does not fit them (an optimisation problem);
# above it, a failure on validation is one of generalisation.
FIT = 0.5


def diagnose(q: VectorQuality) -> str:
    """Why a vector fails (or "passes"), from its measurements, most basic cause first.

    - ``icl_zero``: ICL gets no validation query right either: the model cannot produce
      these answers even in context (open-ended relations, many right answers);
    - ``underfit``: the vector does not fit its own training pairs (train top-1 < 0.5):
      optimisation, layer or learning rate;
    - ``no_transfer``: it fits its training pairs but not the validation ones: the pairs do
      not pin down one mapping (the answer is not determined by the input);
    - ``below_icl``: it transfers, but less than ``ratio`` × the ICL reference.

    A multi-token note is added when more than half the validation answers are several
    tokens and the first-token and whole-answer ICL references differ.
    """
    if q.passes:
        return "passes"
    if q.icl <= 0:
        why = "icl_zero"
    elif q.train_top1 is not None and q.train_top1 < FIT:
        why = "underfit"
    elif q.val <= 0:
        why = "no_transfer"
    else:
        why = "below_icl"
    multi = q.details.get("multi_token_val")
    icl = q.details.get("icl", {})
    if multi is not None and multi > 0.5 and icl.get("first") != icl.get("full"):
        why += "+multi_token"
    return why


def multi_token_share(model: Model, pairs: Sequence[Pair]) -> float:
    """Share of ``pairs`` whose answer is more than one token."""
    return target_ids(model, [p.output for p in pairs])[1] / max(1, len(pairs))


def summarize(qualities: Sequence[VectorQuality]) -> dict:
    """``{"n", "n_pass", "ratio", "passing": [names], "failing": {name: reason},
    "reasons": {reason: count}, "rows": [to_json...]}``."""
    rows = [q.to_json() for q in qualities]
    failing = {q.name: q.reason for q in qualities if not q.passes}
    reasons: dict[str, int] = {}
    for q in qualities:
        if not q.passes:
            reasons[q.reason] = reasons.get(q.reason, 0) + 1
    ratios = sorted({q.ratio for q in qualities})
    metrics = sorted({q.metric for q in qualities})
    return {"n": len(rows), "n_pass": sum(q.passes for q in qualities),
            "ratio": ratios[0] if len(ratios) == 1 else ratios,
            "metric": metrics[0] if len(metrics) == 1 else metrics,
            "passing": [q.name for q in qualities if q.passes], "failing": failing,
            "reasons": reasons, "rows": rows}
