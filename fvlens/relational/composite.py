"""Composite function vectors: a weighted sum over a bank of relation vectors.

A ``RelationBank`` holds one fine-tuned FV per relation (each with its own injection layer).
For an analogy ``A:B::C:?`` ``fit_weights`` finds weights w = softmax(α) (optionally times a
learned scale e^s) that make the model answer B to ``Q: A\\nA:`` when Σ_i w_i v_i is added (each
v_i at its own layer, last position); the same weighted sum is then applied to ``Q: C\\nA:``.
All items of a batch are fitted together, each with its own weights (the per-row hook adds
row b's own composite), so one forward/backward pass serves the whole batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from fvlens.hooks import HookList, frozen_parameters, hook_name
from fvlens.modeltype import Model
from fvlens.relational.finetune import grad_last_logits, load_vector, save_vector
from fvlens.steering import FunctionVector
from fvlens.tasks import Pair

__all__ = ["RelationBank", "CompositeConfig", "fit_weights", "composite_hooks",
           "add_rows_at_positions"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RelationBank:
    """Named relation vectors, each a ``FunctionVector`` with its injection layer.

    Attributes:
        names: the relation (task) names.
        vectors: one FunctionVector per name, each with ``layer`` set.
    """

    names: tuple[str, ...]
    vectors: tuple[FunctionVector, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.vectors) or not self.names:
            raise ValueError(f"a bank needs one vector per name and at least one: "
                             f"{len(self.names)} names, {len(self.vectors)} vectors")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate relation names in the bank: {self.names}")
        for n, v in zip(self.names, self.vectors):
            if not isinstance(v, FunctionVector) or v.layer is None:
                raise ValueError(f"bank vector {n!r} must be a FunctionVector with a layer "
                                 "(fine-tune with inject='fv')")

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"relation {name!r} is not in the bank; it has {list(self.names)}")
        return self.names.index(name)

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/{name}.safetensors`` per relation."""
        folder = Path(folder)
        for n, v in zip(self.names, self.vectors):
            save_vector(folder / f"{n}.safetensors", v, meta={"relation": n})
        return folder

    @classmethod
    def load(cls, folder: str | Path, names: Sequence[str] | None = None) -> RelationBank:
        """Read every ``*.safetensors`` FV in ``folder`` (or only ``names``), sorted by name."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"bank folder {folder} does not exist; build one with "
                                    "`fvlens finetune --task T --out DIR` per task or "
                                    "fvlens.relational.analogies.build_bank")
        files = sorted(folder.glob("*.safetensors"))
        if names is not None:
            have = {f.stem for f in files}
            missing = set(names) - have
            if missing:
                raise ValueError(f"bank {folder} lacks {sorted(missing)}; it has {sorted(have)}")
            files = [f for f in files if f.stem in set(names)]
        if not files:
            raise ValueError(f"bank folder {folder} holds no .safetensors vectors")
        loaded = [(f.stem, load_vector(f)[0]) for f in files]
        fvs = [(n, v) for n, v in loaded if isinstance(v, FunctionVector)]
        if len(fvs) < len(loaded):
            skipped = sorted(n for n, v in loaded if not isinstance(v, FunctionVector))
            raise ValueError(f"bank {folder} holds DFVs {skipped}; a bank holds FVs only")
        return cls(names=tuple(n for n, _ in fvs), vectors=tuple(v for _, v in fvs))


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompositeConfig:
    """How the weights of a composite vector are fitted.

    Attributes:
        steps: Adam steps on the A:B prompt.
        lr: Adam learning rate of the weight logits (and of the log-scale).
        affine: also learn a scale e^s of the weighted sum (else the scale stays 1).
        init: "uniform" (α = 0) or "best" (α one-hot-ish toward the bank vector that gives B
            the highest probability before fitting).
        temperature_init: logit given to the best vector when ``init="best"``.
    """

    steps: int = 20
    lr: float = 0.3
    affine: bool = True
    init: str = "uniform"
    temperature_init: float = 3.0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be ≥ 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.init not in ("uniform", "best"):
            raise ValueError(f"init must be 'uniform' or 'best', got {self.init!r}")


def add_rows_at_positions(vectors: Tensor, positions: Tensor):
    """Hook function adding ``vectors[b]`` at ``positions[b]`` of row b of the residual.

    Args:
        vectors: ``[batch, d_model]`` (may require grad).
        positions: ``[batch]`` position per row (padded coordinates).
    """

    def hook(x: Tensor, hook) -> Tensor:
        x = x.clone()
        rows = torch.arange(x.shape[0], device=x.device)
        x[rows, positions.to(x.device)] += vectors.to(device=x.device, dtype=x.dtype)
        return x

    return hook


def composite_hooks(bank: RelationBank, weights: Float[Tensor, "batch n_bank"], *,
                    positions: Int[Tensor, " batch"] | None = None) -> HookList:
    """Per-row composite Σ_i weights[b, i] · v_i, each v_i added at its own layer.

    Args:
        bank: the relation vectors.
        weights: per row, one weight per bank vector (already normalised and scaled).
        positions: the position edited in each row; default the last (``-1``).
    """
    if weights.shape[1] != len(bank):
        raise ValueError(f"weights have {weights.shape[1]} columns for a bank of {len(bank)}")
    if positions is None:
        positions = torch.full((weights.shape[0],), -1, dtype=torch.long)
    by_layer: dict[int, list[int]] = {}
    for i, v in enumerate(bank.vectors):
        by_layer.setdefault(int(v.layer), []).append(i)
    out: HookList = []
    for layer in sorted(by_layer):
        idx = by_layer[layer]
        mat = torch.stack([bank.vectors[i].vector.float() for i in idx])
        out.append((hook_name("resid_post", layer),
                    add_rows_at_positions(weights[:, idx] @ mat.to(weights.device), positions)))
    return out


def _weights(alpha: Tensor, log_scale: Tensor) -> Tensor:
    return alpha.softmax(-1) * log_scale.exp()[:, None]


def fit_weights(model: Model, bank: RelationBank, stems: Sequence[Pair],
                cfg: CompositeConfig = CompositeConfig(), *, batch_size: int = 32
                ) -> Float[Tensor, "batch n_bank"]:
    """Fit one weight vector per stem ``A:B`` so the composite makes ``Q: A\\nA:`` answer B.

    Args:
        stems: the analogies' first pairs (input A, output B; the target is B's first token).
        cfg: the fitting settings.
        batch_size: stems fitted together.

    Returns:
        ``[n_stems, n_bank]`` weights (softmax times the scale), detached.
    """
    from fvlens.prompts import zero_shot_prompts

    out = []
    with frozen_parameters(model):
        for start in range(0, len(stems), batch_size):
            batch = zero_shot_prompts(model, list(stems[start:start + batch_size]))
            out.append(_fit_batch(model, bank, batch, cfg))
    return torch.cat(out)


def single_vector_logprobs(model: Model, bank: RelationBank, batch
                           ) -> Float[Tensor, "batch n_bank"]:
    """log p(target) of each row under each bank vector alone (weight 1)."""
    cols = []
    with torch.no_grad():
        for i in range(len(bank)):
            w = torch.zeros(len(batch), len(bank))
            w[:, i] = 1.0
            logits = grad_last_logits(model, batch.tokens, batch.attention_mask,
                                      composite_hooks(bank, w))
            cols.append(logits.log_softmax(-1).gather(1, batch.targets[:, None])[:, 0].cpu())
    return torch.stack(cols, 1)


def _fit_batch(model, bank: RelationBank, batch, cfg: CompositeConfig) -> Tensor:
    n = len(batch)
    alpha = torch.zeros(n, len(bank))
    if cfg.init == "best":
        best = single_vector_logprobs(model, bank, batch).argmax(1)
        alpha[torch.arange(n), best] = cfg.temperature_init
    alpha = torch.nn.Parameter(alpha)
    log_scale = torch.nn.Parameter(torch.zeros(n))
    params = [alpha, log_scale] if cfg.affine else [alpha]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    targets = batch.targets.to(model.cfg.device)
    for _ in range(cfg.steps):
        logits = grad_last_logits(model, batch.tokens, batch.attention_mask,
                                  composite_hooks(bank, _weights(alpha, log_scale)))
        # sum over rows: each row's weights get only their own row's gradient
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return _weights(alpha, log_scale).detach()
