"""Composite function vectors: per-item weights over a bank of relation vectors.

For an analogy ``A:B::C:?`` a composite is Σ_i w_i v_i, each bank vector v_i added at its own
layer at the last prompt position; the weights come from the stem ``A:B`` only. Variants:

- ``softmax``: w = softmax(α), fitted with Adam so that the steered ``Q: A\\nA:`` gives B
  (the summed log-probability of B's tokens); the weights sum to 1.
- ``affine``: w = e^s · softmax(α) + β: the softmax weights under a learned scale and bias over
  the bank (Kang, Wu & Lu's "affine transformation"; β lets a vector enter with a negative
  weight), fitted the same way.
- ``similarity``: no fitting: w = softmax(cos(r_AB, v_i) / τ) over the bank, where r_AB is the
  stem's own ICL representation at v_i's layer (``pair_deltas``) and both sides are centred.
- ``top_m``: a sparse mixture: the m bank vectors that alone give B the highest probability,
  weighted by that probability (a posterior over relations under a uniform prior).

Options that every variant shares or that its grid tries: ``init`` "best" starts a fit near
the single best vector; ``renorm`` rescales a mixture to the weighted mean norm of its
vectors (a convex mixture of vectors pointing apart is shorter than each). The grids are
chosen on validation items (``fvlens.relational.analogies``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from fvlens.modeltype import Model

from fvlens.batch import PromptBatch
from fvlens.hooks import HookList, frozen_parameters, hook_name
from fvlens.prompts import DEFAULT_TEMPLATE, pad_token_id, tokenize, zero_shot_prompts
from fvlens.relational.answers import add_rows_at_positions
from fvlens.relational.bank import RelationBank
from fvlens.relational.scoring import RowScorer
from fvlens.relational.taskvec import last_residuals
from fvlens.tasks import Pair

__all__ = ["VARIANTS", "CompositeConfig", "RelationBank", "composite_edits", "composite_hooks",
           "fit_weights", "similarity_weights", "top_m_weights", "renormalize", "pair_deltas",
           "bank_similarity", "add_rows_at_positions"]

VARIANTS = ("softmax", "affine", "similarity", "top_m")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompositeConfig:
    """How fitted composite weights are found.

    Attributes:
        steps: Adam steps on the stems.
        lr: Adam learning rate of α (and s, β).
        init: "uniform" (α = 0) or "best" (α = ``temperature_init`` on the single best
            vector, 0 elsewhere).
        temperature_init: α of the best vector when ``init="best"``.
    """

    steps: int = 20
    lr: float = 0.3
    init: str = "uniform"
    temperature_init: float = 3.0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be ≥ 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.init not in ("uniform", "best"):
            raise ValueError(f"init must be 'uniform' or 'best', got {self.init!r}")


def composite_edits(bank: RelationBank, weights: Float[Tensor, "n n_bank"]
                    ) -> dict[int, Float[Tensor, "n d_model"]]:
    """Per layer, each row's Σ_i w_i v_i over the bank vectors at that layer."""
    if weights.shape[1] != len(bank):
        raise ValueError(f"weights have {weights.shape[1]} columns for a bank of {len(bank)}")
    out = {}
    for layer in sorted(set(bank.layers)):
        idx = [i for i, L in enumerate(bank.layers) if L == layer]
        mat = torch.stack([bank.vectors[i].vector.float() for i in idx]).to(weights.device)
        out[layer] = weights[:, idx] @ mat
    return out


def composite_hooks(bank: RelationBank, weights: Float[Tensor, "batch n_bank"], *,
                    positions: Int[Tensor, " batch"] | None = None) -> HookList:
    """Per-row composite as a hook list for a full forward pass (row b gets Σ_i weights[b, i]
    v_i, each v_i at its own layer, at ``positions[b]``; default the last position)."""
    if positions is None:
        positions = torch.full((weights.shape[0],), -1, dtype=torch.long)
    return [(hook_name("resid_post", layer), add_rows_at_positions(e, positions))
            for layer, e in composite_edits(bank, weights).items()]


def renormalize(bank: RelationBank, weights: Float[Tensor, "n n_bank"]) -> Tensor:
    """Weights rescaled per row so that ‖Σ w_i v_i‖ = Σ |w_i| ‖v_i‖."""
    mat = torch.stack([v.vector.float() for v in bank.vectors])
    norm = (weights @ mat).norm(dim=-1)
    want = weights.abs() @ mat.norm(dim=-1)
    return weights * (want / norm.clamp_min(1e-8))[:, None]


def top_m_weights(logp: Float[Tensor, "n n_bank"], m: int) -> Tensor:
    """The m vectors with the highest log p(B | v_i) per row, weighted by softmax(log p)."""
    if not 1 <= m <= logp.shape[1]:
        raise ValueError(f"m must be in [1, {logp.shape[1]}], got {m}")
    top = logp.topk(m, dim=1)
    w = torch.zeros_like(logp)
    w.scatter_(1, top.indices, top.values.softmax(-1))
    return w


def similarity_weights(sim: Float[Tensor, "n n_bank"], tau: float) -> Tensor:
    """softmax(sim / τ) per row."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return (sim / tau).softmax(-1)


@torch.no_grad()
def pair_deltas(model: Model, stems: Sequence[Pair], layers: Sequence[int]
                ) -> dict[int, Float[Tensor, "n d_model"]]:
    """Each stem's own ICL representation: the last-token ``hook_resid_post`` of ``Q: A\\nA:
    B\\n\\nQ: A\\nA:`` minus that of ``Q: A\\nA:``, at each layer (what the one demonstration
    adds where a function vector acts)."""
    t = DEFAULT_TEMPLATE
    texts = [t.query.format(x=p.input) + t.answer_prefix + p.output + t.demo_suffix
             + t.query.format(x=p.input) for p in stems]
    demo = PromptBatch.from_rows([tokenize(model, s)[0] for s in texts], [0] * len(stems),
                                 kind="icl", pad_id=pad_token_id(model), queries=list(stems))
    with_demo = last_residuals(model, demo)
    alone = last_residuals(model, zero_shot_prompts(model, stems))
    return {int(L): (with_demo[L] - alone[L]) for L in sorted(set(layers))}


def bank_similarity(deltas: dict[int, Tensor], bank: RelationBank, *, center: bool = True
                    ) -> Float[Tensor, "n n_bank"]:
    """Cosine of each stem's delta (at v_i's layer) with each bank vector v_i; with
    ``center`` the stems' mean delta per layer and the bank's mean vector are removed first
    (both carry a large shared component)."""
    vecs = torch.stack([v.vector.float() for v in bank.vectors])
    if center:
        vecs = vecs - vecs.mean(0)
    cols = []
    for i, layer in enumerate(bank.layers):
        d = deltas[layer].float()
        if center:
            d = d - d.mean(0)
        cols.append(torch.nn.functional.cosine_similarity(d, vecs[i][None], dim=-1))
    return torch.stack(cols, 1)


def fit_weights(stems: RowScorer, bank: RelationBank, cfg: CompositeConfig = CompositeConfig(),
                *, affine: bool = False, logp: Tensor | None = None,
                items: Sequence[int] | None = None) -> Float[Tensor, "n n_bank"]:
    """Fit one weight vector per stem so that the steered ``Q: A\\nA:`` gives B.

    Args:
        stems: ``stem_scorer(model, items, start=min(bank.layers) + 1)``.
        affine: fit w = e^s · softmax(α) + β (else w = softmax(α)).
        logp: ``[n, n_bank]`` log p(B | v_i) (needed for ``init="best"``).
        items: fit only these items (rows of the result for other items are uniform).

    Returns:
        ``[n_items, n_bank]`` weights, detached.
    """
    n, k = stems.n_items, len(bank)
    alpha = torch.zeros(n, k)
    if cfg.init == "best":
        if logp is None:
            raise ValueError("init='best' needs logp (log p(B | each bank vector))")
        alpha[torch.arange(n), logp.argmax(1).cpu()] = cfg.temperature_init
    alpha = torch.nn.Parameter(alpha)
    log_scale = torch.nn.Parameter(torch.zeros(n))
    bias = torch.nn.Parameter(torch.zeros(n, k))
    opt = torch.optim.Adam([alpha, log_scale, bias] if affine else [alpha], lr=cfg.lr)

    def weights() -> Tensor:
        w = alpha.softmax(-1)
        return w * log_scale.exp()[:, None] + bias if affine else w

    with frozen_parameters(stems.model):
        for _ in range(cfg.steps):
            _, sc = stems.scores(composite_edits(bank, weights()), items=items)
            loss = sc.row_nll.sum()  # each item's weights get only their own row's gradient
            opt.zero_grad()
            loss.backward()
            opt.step()
    return weights().detach()
