"""The training loop of fine-tuned vectors: many vectors, one batch.

A ``Job`` is one vector to train (its initial value, learning rate, training and validation
pairs). ``train_jobs`` trains jobs that edit the same layer together: the rows of every job
share one forward and backward pass per step, each row edited by its own job's vector. Every
job keeps its own parameter, Adam state (Adam is element-wise, so a shared optimiser with one
parameter group per job equals separate ones), learning rate, batch order and best step, so a
job trained with others gets the result it would get alone. On a CPU a small batch is bound by
reading the model's weights, not by arithmetic, so twenty vectors in one batch cost little
more than one.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm
from fvlens.modeltype import Model

from fvlens.relational.objective import ScoredSplit, Vector, value_of
from fvlens.steering import DistributedFV, FunctionVector
from fvlens.tasks import Pair

__all__ = ["Job", "Trained", "train_jobs", "edit_start"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Job:
    """One vector to train.

    Attributes:
        name: for progress bars.
        train / val: the pairs.
        initial: the starting vector (its layer or heads fix where it edits).
        lr: its Adam learning rate.
        screen: anything to carry along (the layer screen of its preparation).
    """

    name: str
    train: list[Pair]
    val: list[Pair]
    initial: Vector
    lr: float
    screen: dict | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Trained:
    """A job's best-validation value, its history and how it does on its own pairs."""

    value: Tensor
    history: tuple[dict, ...]
    best_step: int
    val_top1: float
    val_loss: float
    train_top1: float
    train_loss: float


def edit_start(model: Model, vector: Vector) -> int:
    """The first block a vector's edit changes (``layer + 1`` for an FV)."""
    return vector.layer + 1 if isinstance(vector, FunctionVector) else vector.first_layer(model)


def train_jobs(model: Model, jobs: Sequence[Job], *, steps: int, batch_size: int,
               seed: int, target: str = "first", eval_every: int | None = None,
               progress: bool = True, desc: str = "") -> list[Trained]:
    """Train every job's vector, all rows of all jobs in one batch per step.

    Args:
        jobs: vectors that share their edit's first block (``edit_start``) and have the same
            number of training pairs.
        steps: Adam steps (cosine-decayed learning rate, each job at its own ``lr``).
        batch_size: training rows per job and step.
        seed: seeds each job's batch order (the same order a job would get alone).
        target: "first" or "full".
        eval_every: validation every this many steps (default: once per epoch).

    Returns:
        One ``Trained`` per job, the best validation step's value (ties: lower loss).
    """
    starts = {edit_start(model, j.initial) for j in jobs}
    if len(starts) != 1 or len({len(j.train) for j in jobs}) != 1:
        raise ValueError("jobs trained together need one edit layer and equal training sizes")
    if len(jobs) > 1 and not all(isinstance(j.initial, FunctionVector) for j in jobs):
        raise ValueError("DFVs are trained one at a time")
    start = starts.pop()
    device = model.cfg.device

    def split(which: str) -> tuple[ScoredSplit, Tensor, list[list[int]]]:
        pairs, owner, rows = [], [], []
        for k, j in enumerate(jobs):
            ps = getattr(j, which)
            rows.append(list(range(len(pairs), len(pairs) + len(ps))))
            pairs += ps
            owner += [k] * len(ps)
        return (ScoredSplit(model, pairs, target, start=start),
                torch.tensor(owner, device=device), rows)

    train_s, train_owner, train_rows = split("train")
    val_s, val_owner, val_rows = split("val")
    params = [torch.nn.Parameter(value_of(j.initial).detach().clone().to(device)) for j in jobs]
    opt = torch.optim.Adam([{"params": [p], "lr": j.lr} for p, j in zip(params, jobs)])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    n_train = len(jobs[0].train)
    bs = min(batch_size, n_train)
    eval_every = eval_every or math.ceil(n_train / bs)
    order = [random.Random(seed) for _ in jobs]
    pending: list[list[int]] = [[] for _ in jobs]
    single = isinstance(jobs[0].initial, DistributedFV)

    def scores(s: ScoredSplit, owner: Tensor, values: list[Tensor], rows=None):
        edit = values[0] if single else torch.stack(values)[owner]
        return s.scores(jobs[0].initial, edit, rows)

    def per_job(sc, rows: list[list[int]]) -> list[tuple[float, float]]:
        ok = sc.correct(target).float()
        return [(float(sc.row_nll[r].mean()), float(ok[r].mean())) for r in rows]

    def validate() -> list[tuple[float, float]]:
        with torch.no_grad():
            return per_job(scores(val_s, val_owner, [p.detach() for p in params]), val_rows)

    histories: list[list[dict]] = [[] for _ in jobs]
    best = []
    for k, (vl, va) in enumerate(validate()):
        histories[k].append({"step": 0, "train_loss": None, "val_loss": vl, "val_top1": va,
                             "lr": jobs[k].lr})
        best.append((va, -vl, 0, params[k].detach().clone().cpu()))
    name = jobs[0].name if len(jobs) == 1 else f"{len(jobs)} tasks"
    bar = tqdm(range(1, steps + 1), desc=f"finetune {name} {desc}",
               disable=not progress, leave=False)
    for step in bar:
        picks = []
        for k in range(len(jobs)):
            if len(pending[k]) < bs:
                perm = list(range(n_train))
                order[k].shuffle(perm)
                pending[k] += perm
            picks.append([train_rows[k][r] for r in pending[k][:bs]])
            pending[k] = pending[k][bs:]
        rows = [r for p in picks for r in p]
        sc = scores(train_s, train_owner, list(params), rows)
        per_row = sc.row_nll.view(len(jobs), bs)
        losses = per_row.mean(1)
        opt.zero_grad()
        losses.sum().backward()  # each job's loss reaches only its own parameter
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            lrs = sched.get_last_lr()
            for k, (vl, va) in enumerate(validate()):
                histories[k].append({"step": step, "train_loss": float(losses[k].detach()),
                                     "val_loss": vl, "val_top1": va, "lr": lrs[k]})
                if (va, -vl) > best[k][:2]:
                    best[k] = (va, -vl, step, params[k].detach().clone().cpu())
            bar.set_postfix(loss=f"{float(losses.mean().detach()):.3f}",
                            val_top1=f"{sum(b[0] for b in best) / len(best):.2f}")
    with torch.no_grad():
        fit = per_job(scores(train_s, train_owner, [b[3].to(device) for b in best]), train_rows)
    return [Trained(value=b[3], history=tuple(h), best_step=b[2], val_top1=b[0], val_loss=-b[1],
                    train_top1=f[1], train_loss=f[0])
            for b, h, f in zip(best, histories, fit)]
