"""Fine-tuned function vectors (Kang, Wu & Lu 2026): train the FV or DFV itself on ~20 pairs.

The model stays frozen; only the vector is a parameter. The loss is the negative
log-likelihood of the answer after the zero-shot prompt ``Q: {x}\\nA:`` with the vector added at
the prompt's last position: of its first token (``target="first"``, the FV literature's
measure) or of every token (``target="full"``, for relations whose answers are several tokens).
A fine-tuned vector is used exactly like an extracted one (``vector.hooks()``). An FV at layer
L trains on a cached ``blocks.{L}.hook_resid_post`` of its prompts (the blocks below the edit
never change), so each step runs only the blocks above it. Settings the paper leaves open
(validation split, learning-rate rule, schedule) are options of ``FinetuneConfig`` and are
documented in ``docs/relational.md``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from fvlens.modeltype import Model

from fvlens.hooks import frozen_parameters
from fvlens.plan import extract_vectors
from fvlens.prompts import zero_shot_prompts
from fvlens.relational.answers import TARGETS
from fvlens.relational.objective import Vector, grad_last_logits, residual_scale, score_vector
from fvlens.relational.objective import value_of as _value
from fvlens.relational.objective import with_value as _with
from fvlens.relational.training import Job, edit_start, train_jobs
from fvlens.relational.taskvec import screen_many, task_vectors
from fvlens.steering import DistributedFV, FunctionVector
from fvlens.tasks import Pair, Task, load_task

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "finetune_many", "grad_last_logits",
           "split_pairs",
           "residual_scale", "score_vector", "save_vector", "load_vector", "INITS", "INJECTS",
           "DEFAULT_LR_SCALE"]

INITS = ("aie", "attnlrp", "zeros", "random", "icl_mean")
INJECTS = ("fv", "dfv")
# lr = DEFAULT_LR_SCALE × per-coordinate RMS of the activation being edited (the residual
# stream at the injection layer's last token for an FV, the selected heads' z for a DFV).
# On SmolLM2-135M (‖resid‖ ≈ 130 at layer 10, d_model 576, so RMS ≈ 5.4) this gives lr ≈ 0.3,
# the value that took capitalize from 0.0 to 0.77 held-out top-1 in 60 full-batch steps
# (docs/relational.md has the measured numbers).
DEFAULT_LR_SCALE = 0.05


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Settings of one fine-tuning run.

    Attributes:
        pairs: training pairs (drawn, seeded, from the task's train split).
        steps: optimiser steps (Adam, cosine-decayed learning rate).
        lr: learning rate; None = ``lr_scale`` × the per-coordinate RMS of the edited
            activation over the training prompts (``residual_scale``).
        lr_scale: the constant c of the scale-aware learning rate.
        batch_size: prompts per step (capped at ``pairs``).
        seed: seeds the pair draw, the batch order and the random init.
        inject: "fv" (one ``d_model`` vector at ``blocks.{layer}.hook_resid_post``) or "dfv"
            (one ``d_head`` offset per selected head at its ``hook_z``).
        init: "aie" / "attnlrp" (the vector ``extract_vectors`` builds with that selection),
            "zeros", "random" (normal, scaled to the extracted vector's norm), or "icl_mean"
            (the ICL task vector of the training pairs at the layer, ``fvlens.relational.
            taskvec``; with ``layer=None`` the layer whose task vector does best on the
            validation pairs).
        target: "first" (loss and top-1 on the answer's first token) or "full" (every token;
            top-1 = the whole answer is the greedy continuation). "full" needs ``inject="fv"``.
        layer: FV injection layer; None = the extracted FV's layer (or the screened one).
        heads_from: selection method giving the layer and heads when ``init`` is not a
            selection method ("zeros", "random", "icl_mean").
        k: heads per extracted vector.
        val_fraction: validation pairs, as a fraction of ``pairs`` (drawn from the train split,
            disjoint from the training pairs); the best step is chosen on them.
        n_val: validation pairs as a number (overrides ``val_fraction``; capped at what the
            train split has beyond the training pairs).
        eval_every: validation every this many steps (default: once per epoch).
        test_fraction: the task's test split (held out from extraction and fine-tuning).
        n_test: held-out queries evaluated (a seeded subset), None for all.
        shots: demonstrations of the extraction's ICL prompts and of the ICL baseline.
        tv_shots: demonstrations of the prompts of the ``icl_mean`` task vector.
    """

    pairs: int = 20
    steps: int = 60
    lr: float | None = None
    lr_scale: float = DEFAULT_LR_SCALE
    batch_size: int = 10
    seed: int = 0
    inject: str = "fv"
    init: str = "aie"
    target: str = "first"
    layer: int | None = None
    heads_from: str = "aie"
    k: int = 20
    val_fraction: float = 0.5
    n_val: int | None = None
    eval_every: int | None = None
    test_fraction: float = 0.3
    n_test: int | None = 50
    shots: int = 10
    tv_shots: int = 5

    def __post_init__(self) -> None:
        if self.inject not in INJECTS:
            raise ValueError(f"inject must be one of {INJECTS}, got {self.inject!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.inject == "dfv" and (self.target == "full" or self.init == "icl_mean"):
            raise ValueError("target='full' and init='icl_mean' train an FV; use inject='fv'")
        if self.heads_from not in ("aie", "attnlrp"):
            raise ValueError(f"heads_from must be 'aie' or 'attnlrp', got {self.heads_from!r}")
        for name in ("pairs", "steps", "batch_size", "k", "shots", "tv_shots"):
            if getattr(self, name) < 1:
                raise ValueError(f"FinetuneConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0 or None (scale-aware), got {self.lr}")
        if not self.lr_scale > 0:
            raise ValueError(f"lr_scale must be > 0, got {self.lr_scale}")
        if not 0 < self.val_fraction <= 2:
            raise ValueError(f"val_fraction must lie in (0, 2], got {self.val_fraction}")
        if self.n_val is not None and self.n_val < 1:
            raise ValueError(f"n_val must be ≥ 1 or None, got {self.n_val}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError("eval_every must be ≥ 1 or None (once per epoch)")

    @property
    def selection(self) -> str:
        """The head-selection method that supplies the layer, heads and reference vector."""
        return self.init if self.init in ("aie", "attnlrp") else self.heads_from

    @property
    def needs_extraction(self) -> bool:
        """Whether ``finetune`` runs ``extract_vectors`` (head scoring) for this config."""
        if self.init in ("aie", "attnlrp") or self.inject == "dfv":
            return True
        return self.layer is None and self.init != "icl_mean"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneResult:
    """A fine-tuned vector and how it was trained.

    Attributes:
        vector: the best-validation vector (``FunctionVector`` with its layer, or
            ``DistributedFV``); apply it with ``vector.hooks()``.
        initial: the vector training started from.
        history: one row per validation: step, train loss, val loss, val top-1, lr.
        best_step: the step of ``vector`` (0 = the initial vector).
        lr: the learning rate used.
        config: the settings.
        train_pairs / val_pairs: the pairs used.
        val_top1 / val_loss: of ``vector`` on the validation pairs (``config.target``).
        train_top1 / train_loss: of ``vector`` on the training pairs (does it fit them?).
        layer_screen: ``{layer: {"top1", "mean_rank"}}`` of the ICL task vector when
            ``init="icl_mean"`` chose the layer, else None.
    """

    vector: Vector
    initial: Vector
    history: tuple[dict, ...]
    best_step: int
    lr: float
    config: FinetuneConfig
    train_pairs: tuple[Pair, ...]
    val_pairs: tuple[Pair, ...]
    val_top1: float = float("nan")
    val_loss: float = float("nan")
    train_top1: float = float("nan")
    train_loss: float = float("nan")
    layer_screen: dict | None = None


# --- the training loop ---------------------------------------------------------------------


def _param_fingerprint(model: Model) -> float:
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in model.parameters()))


def split_pairs(task: Task, cfg: FinetuneConfig) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Train / validation pairs from the train split, and the held-out test pairs."""
    train, test = task.split(test_fraction=cfg.test_fraction, seed=cfg.seed)
    pool = list(train.pairs)
    random.Random(cfg.seed).shuffle(pool)
    n_val = (max(1, round(cfg.val_fraction * cfg.pairs)) if cfg.n_val is None
             else min(cfg.n_val, len(pool) - cfg.pairs))
    if len(pool) < cfg.pairs + max(n_val, 1):
        raise ValueError(f"task {task.name!r} has {len(pool)} training-split pairs, fewer than "
                         f"pairs + validation = {cfg.pairs} + {max(n_val, 1)}; lower pairs= or "
                         "val_fraction=")
    test_q = list(test.pairs)
    if cfg.n_test is not None and len(test_q) > cfg.n_test:
        test_q = list(test.sample(cfg.n_test, seed=cfg.seed).pairs)
    return pool[:cfg.pairs], pool[cfg.pairs:cfg.pairs + n_val], test_q


def _initial(model: Model, cfg: FinetuneConfig, reference: Vector | None,
             layer: int | None, scale: float, gen: torch.Generator,
             icl_mean: Tensor | None = None) -> Vector:
    """The starting vector for ``cfg.init``."""
    if cfg.inject == "fv":
        d = model.cfg.d_model
        ref = reference.vector if isinstance(reference, FunctionVector) else None
        if cfg.init in ("aie", "attnlrp"):
            v = ref.clone()
        elif cfg.init == "icl_mean":
            v = icl_mean.clone()
        elif cfg.init == "zeros":
            v = torch.zeros(d)
        else:
            v = torch.randn(d, generator=gen)
            norm = float(ref.norm()) if ref is not None and ref.norm() > 0 else scale * d ** 0.5
            v = v * norm / v.norm()
        heads = reference.heads if reference is not None else ()
        return FunctionVector(vector=v.float(), heads=heads, layer=layer)
    if not isinstance(reference, DistributedFV):
        raise ValueError("a DFV needs heads: pass vectors from extract_vectors or heads_from")
    means = reference.means.float()
    if cfg.init in ("aie", "attnlrp"):
        m = means.clone()
    elif cfg.init == "zeros":
        m = torch.zeros_like(means)
    else:
        m = torch.randn(means.shape, generator=gen)
        norms = means.norm(dim=-1, keepdim=True)
        norms = torch.where(norms > 0, norms, torch.full_like(norms, scale * means.shape[-1] ** .5))
        m = m * norms / m.norm(dim=-1, keepdim=True)
    return DistributedFV(heads=reference.heads, means=m)


def _prepare(model: Model, task: Task, cfg: FinetuneConfig, vectors,
             tv: Tensor | None = None, screen: dict | None = None) -> Job:
    """Split, reference vector, layer, learning rate and initial vector of one task (``tv``
    and ``screen``: its task vectors and layer screen, for ``init="icl_mean"``)."""
    train_q, val_q, _ = split_pairs(task, cfg)
    method = cfg.selection
    if cfg.needs_extraction and vectors is None:
        vectors = extract_vectors(model, task, select=(method,), k=cfg.k, seed=cfg.seed,
                                  shots=cfg.shots)
    if vectors is not None and method not in vectors.fv:
        raise ValueError(f"vectors hold methods {sorted(vectors.fv)}, init/heads_from needs "
                         f"{method!r}; extract with select=({method!r},)")
    reference: Vector | None = None
    if vectors is not None:
        reference = (vectors.fv[method] if cfg.inject == "fv" else
                     DistributedFV(heads=vectors.dfv[method].heads,
                                   means=vectors.dfv[method].means * vectors.dfv_scale[method]))
    layer = cfg.layer
    if layer is None and screen is not None:
        layer = min(screen, key=lambda L: (-screen[L]["top1"], screen[L]["mean_rank"], L))
    if layer is None and isinstance(reference, FunctionVector):
        layer = reference.layer
    if cfg.inject == "fv" and not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} does not exist: the model has {model.cfg.n_layers}")
    train_b = zero_shot_prompts(model, train_q)
    scale = (residual_scale(model, train_b, layer=layer) if cfg.inject == "fv" else
             residual_scale(model, train_b, heads=reference.heads))
    lr = cfg.lr if cfg.lr is not None else cfg.lr_scale * scale
    gen = torch.Generator().manual_seed(cfg.seed)
    initial = _initial(model, cfg, reference, layer, scale, gen,
                       None if tv is None else tv[layer])
    return Job(name=task.name, train=train_q, val=val_q, initial=initial, lr=lr, screen=screen)


def finetune(model: Model, task: str | Task, cfg: FinetuneConfig = FinetuneConfig(),
             *, vectors=None, progress: bool = True) -> FinetuneResult:
    """Fine-tune a task's FV or DFV on ``cfg.pairs`` zero-shot pairs; the model stays frozen.

    Args:
        model: the model (its parameters are frozen during training and restored after).
        task: a task name, path or Task.
        cfg: the settings.
        vectors: ``extract_vectors(model, task, select=(cfg.selection,), k=cfg.k,
            seed=cfg.seed, shots=cfg.shots)`` if already computed (it supplies the layer,
            heads and initial vector); computed here when None and needed.
        progress: show a tqdm bar with loss and validation top-1.

    Returns:
        A ``FinetuneResult`` holding the best-validation vector.
    """
    return finetune_many(model, [task], cfg, vectors=[vectors], progress=progress)[0]


def finetune_many(model: Model, tasks: Sequence[str | Task],
                  cfg: FinetuneConfig = FinetuneConfig(), *, vectors: Sequence | None = None,
                  progress: bool = True) -> list[FinetuneResult]:
    """Fine-tune one vector per task, the FVs that share a layer in one batch.

    Each task keeps its own parameter, Adam state, learning rate, batch order and best step,
    so the results equal separate ``finetune`` calls; a batch of many tasks reads the
    model's weights once per step instead of once per task (on a CPU, small batches are
    bound by that memory traffic, not by arithmetic).

    Args:
        tasks: task names, paths or Tasks.
        vectors: per task, its ``extract_vectors`` result or None (see ``finetune``).
    """
    tasks = [t if isinstance(t, Task) else load_task(t) for t in tasks]
    vectors = list(vectors) if vectors is not None else [None] * len(tasks)
    if len(vectors) != len(tasks):
        raise ValueError(f"{len(vectors)} vectors for {len(tasks)} tasks")
    tvs: list = [None] * len(tasks)
    screens: list = [None] * len(tasks)
    if cfg.init == "icl_mean":
        splits = [split_pairs(t, cfg) for t in tasks]
        tvs = [task_vectors(model, tr, shots=cfg.tv_shots, seed=cfg.seed) for tr, _, _ in splits]
        if cfg.layer is None:  # one resumed pass per layer for all tasks
            screens = screen_many(model, tvs, [zero_shot_prompts(model, va)
                                               for _, va, _ in splits])
    jobs = [_prepare(model, t, cfg, v, tv, sc)
            for t, v, tv, sc in zip(tasks, vectors, tvs, screens)]
    groups: dict[int, list[int]] = {}
    for i, j in enumerate(jobs):  # DFVs hook per vector: one at a time
        key = edit_start(model, j.initial) if cfg.inject == "fv" else -1 - i
        groups.setdefault(key, []).append(i)
    out: list[FinetuneResult | None] = [None] * len(jobs)
    fingerprint = _param_fingerprint(model)
    with frozen_parameters(model):
        for idx in groups.values():
            trained = train_jobs(model, [jobs[i] for i in idx], steps=cfg.steps,
                                 batch_size=cfg.batch_size, seed=cfg.seed, target=cfg.target,
                                 eval_every=cfg.eval_every, progress=progress,
                                 desc=f"{cfg.inject}/{cfg.init}")
            for i, t in zip(idx, trained):
                j = jobs[i]
                out[i] = FinetuneResult(
                    vector=_with(j.initial, t.value), initial=j.initial,
                    history=t.history, best_step=t.best_step, lr=j.lr, config=cfg,
                    train_pairs=tuple(j.train), val_pairs=tuple(j.val), val_top1=t.val_top1,
                    val_loss=t.val_loss, train_top1=t.train_top1, train_loss=t.train_loss,
                    layer_screen=j.screen)
    if abs(_param_fingerprint(model) - fingerprint) > 1e-6 * max(1.0, abs(fingerprint)):
        raise AssertionError("model parameters changed during fine-tuning; only the vector may "
                             "be trained")
    return out  # type: ignore[return-value]


# --- saving --------------------------------------------------------------------------------


def save_vector(path: str | Path, vector: Vector, *, meta: dict | None = None) -> Path:
    """Save a FunctionVector or DistributedFV as safetensors (heads, layer, meta as metadata)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"kind": "fv" if isinstance(vector, FunctionVector) else "dfv",
            "heads": json.dumps([list(h) for h in vector.heads]),
            "layer": json.dumps(getattr(vector, "layer", None)),
            "meta": json.dumps(meta or {})}
    save_file({"vector": _value(vector).detach().float().cpu().contiguous()}, str(path),
              metadata=info)
    return path


def load_vector(path: str | Path) -> tuple[Vector, dict]:
    """Read a vector written by ``save_vector``; returns ``(vector, meta)``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; write vectors with save_vector or "
                                "`fvlens finetune --out DIR`")
    with safe_open(str(path), framework="pt") as f:
        info = f.metadata() or {}
        value = f.get_tensor("vector")
    if info.get("kind") not in INJECTS:
        raise ValueError(f"{path} is not a fvlens vector file (metadata kind "
                         f"{info.get('kind')!r}); write it with save_vector")
    heads = tuple(tuple(h) for h in json.loads(info["heads"]))
    meta = json.loads(info.get("meta", "{}"))
    if info["kind"] == "fv":
        return FunctionVector(vector=value, heads=heads, layer=json.loads(info["layer"])), meta
    return DistributedFV(heads=heads, means=value), meta
