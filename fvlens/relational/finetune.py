"""Fine-tuned function vectors (Kang, Wu & Lu 2026): train the FV or DFV itself on ~20 pairs.

The model stays frozen; only the vector is a parameter. The loss is the cross-entropy of the
first target token at the last position of zero-shot prompts ``Q: {x}\\nA:`` with the vector
applied through its hook list (``FunctionVector.hooks`` / ``DistributedFV.hooks``), so a
fine-tuned vector is used exactly like an extracted one. Settings the paper leaves open
(validation split, learning-rate rule, schedule) are options of ``FinetuneConfig`` and are
documented in ``docs/relational.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from fvlens.evaluation import evaluate
from fvlens.forward import forward_last
from fvlens.plan import extract_vectors
from fvlens.hooks import HookList, frozen_parameters, hook_name
from fvlens.prompts import PromptBatch, icl_prompts, zero_shot_prompts
from fvlens.steering import DistributedFV, FunctionVector
from fvlens.tasks import Pair, Task, load_task

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "grad_last_logits", "split_pairs",
           "residual_scale", "held_out_comparison", "save_vector", "load_vector", "INITS",
           "INJECTS", "DEFAULT_LR_SCALE"]

INITS = ("aie", "attnlrp", "zeros", "random")
INJECTS = ("fv", "dfv")
# lr = DEFAULT_LR_SCALE × per-coordinate RMS of the activation being edited (the residual
# stream at the injection layer's last token for an FV, the selected heads' z for a DFV).
# On SmolLM2-135M (‖resid‖ ≈ 130 at layer 10, d_model 576, so RMS ≈ 5.4) this gives lr ≈ 0.3,
# the value that took capitalize from 0.0 to 0.77 held-out top-1 in 60 full-batch steps
# (docs/relational.md has the measured numbers).
DEFAULT_LR_SCALE = 0.05
Vector = FunctionVector | DistributedFV


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
            "zeros", or "random" (normal, scaled to the extracted vector's norm).
        layer: FV injection layer; None = the extracted FV's layer.
        heads_from: selection method giving the layer and heads when ``init`` is not a
            selection method ("zeros", "random").
        k: heads per extracted vector.
        val_fraction: validation pairs, as a fraction of ``pairs`` (drawn from the train split,
            disjoint from the training pairs); the best step is chosen on them.
        eval_every: validation every this many steps (default: once per epoch).
        test_fraction: the task's test split (held out from extraction and fine-tuning).
        n_test: held-out queries evaluated (a seeded subset), None for all.
        shots: demonstrations of the extraction's ICL prompts and of the ICL baseline.
    """

    pairs: int = 20
    steps: int = 60
    lr: float | None = None
    lr_scale: float = DEFAULT_LR_SCALE
    batch_size: int = 10
    seed: int = 0
    inject: str = "fv"
    init: str = "aie"
    layer: int | None = None
    heads_from: str = "aie"
    k: int = 20
    val_fraction: float = 0.5
    eval_every: int | None = None
    test_fraction: float = 0.3
    n_test: int | None = 50
    shots: int = 10

    def __post_init__(self) -> None:
        if self.inject not in INJECTS:
            raise ValueError(f"inject must be one of {INJECTS}, got {self.inject!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.heads_from not in ("aie", "attnlrp"):
            raise ValueError(f"heads_from must be 'aie' or 'attnlrp', got {self.heads_from!r}")
        for name in ("pairs", "steps", "batch_size", "k", "shots"):
            if getattr(self, name) < 1:
                raise ValueError(f"FinetuneConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0 or None (scale-aware), got {self.lr}")
        if not self.lr_scale > 0:
            raise ValueError(f"lr_scale must be > 0, got {self.lr_scale}")
        if not 0 < self.val_fraction <= 2:
            raise ValueError(f"val_fraction must lie in (0, 2], got {self.val_fraction}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError("eval_every must be ≥ 1 or None (once per epoch)")

    @property
    def selection(self) -> str:
        """The head-selection method that supplies the layer, heads and reference vector."""
        return self.init if self.init in ("aie", "attnlrp") else self.heads_from


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
    """

    vector: Vector
    initial: Vector
    history: tuple[dict, ...]
    best_step: int
    lr: float
    config: FinetuneConfig
    train_pairs: tuple[Pair, ...]
    val_pairs: tuple[Pair, ...]


# --- forward with gradients ----------------------------------------------------------------


def grad_last_logits(model: HookedTransformer, tokens: Int[Tensor, "batch pos"],
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
def residual_scale(model: HookedTransformer, batch: PromptBatch, *, layer: int | None = None,
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


# --- the training loop ---------------------------------------------------------------------


def _param_fingerprint(model: HookedTransformer) -> float:
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in model.parameters()))


def split_pairs(task: Task, cfg: FinetuneConfig) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Train / validation pairs from the train split, and the held-out test pairs."""
    train, test = task.split(test_fraction=cfg.test_fraction, seed=cfg.seed)
    pool = list(train.pairs)
    random.Random(cfg.seed).shuffle(pool)
    n_val = max(1, round(cfg.val_fraction * cfg.pairs))
    if len(pool) < cfg.pairs + n_val:
        raise ValueError(f"task {task.name!r} has {len(pool)} training-split pairs, fewer than "
                         f"pairs + validation = {cfg.pairs} + {n_val}; lower pairs= or "
                         "val_fraction=")
    test_q = list(test.pairs)
    if cfg.n_test is not None and len(test_q) > cfg.n_test:
        test_q = list(test.sample(cfg.n_test, seed=cfg.seed).pairs)
    return pool[:cfg.pairs], pool[cfg.pairs:cfg.pairs + n_val], test_q


def _initial(model: HookedTransformer, cfg: FinetuneConfig, reference: Vector | None,
             layer: int | None, scale: float, gen: torch.Generator) -> Vector:
    """The starting vector for ``cfg.init``."""
    if cfg.inject == "fv":
        d = model.cfg.d_model
        ref = reference.vector if isinstance(reference, FunctionVector) else None
        if cfg.init in ("aie", "attnlrp"):
            v = ref.clone()
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


def _with(vector: Vector, value: Tensor) -> Vector:
    if isinstance(vector, FunctionVector):
        return dataclasses.replace(vector, vector=value)
    return dataclasses.replace(vector, means=value)


def _value(vector: Vector) -> Tensor:
    return vector.vector if isinstance(vector, FunctionVector) else vector.means


def finetune(model: HookedTransformer, task: str | Task, cfg: FinetuneConfig = FinetuneConfig(),
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
    task = task if isinstance(task, Task) else load_task(task)
    train_q, val_q, _ = split_pairs(task, cfg)
    method = cfg.selection
    needs_extract = cfg.init in ("aie", "attnlrp") or cfg.inject == "dfv" or cfg.layer is None
    if needs_extract and vectors is None:
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
    layer = cfg.layer if cfg.layer is not None else (
        reference.layer if isinstance(reference, FunctionVector) else None)
    if cfg.inject == "fv" and not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} does not exist: the model has {model.cfg.n_layers}")

    train_b = zero_shot_prompts(model, train_q)
    val_b = zero_shot_prompts(model, val_q)
    scale = (residual_scale(model, train_b, layer=layer) if cfg.inject == "fv" else
             residual_scale(model, train_b, heads=reference.heads))
    lr = cfg.lr if cfg.lr is not None else cfg.lr_scale * scale
    gen = torch.Generator().manual_seed(cfg.seed)
    initial = _initial(model, cfg, reference, layer, scale, gen)

    param = torch.nn.Parameter(_value(initial).detach().clone().to(model.cfg.device))
    live = _with(initial, param)
    opt = torch.optim.Adam([param], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    bs = min(cfg.batch_size, len(train_q))
    per_epoch = math.ceil(len(train_q) / bs)
    eval_every = cfg.eval_every or per_epoch
    order_rng = random.Random(cfg.seed)

    def validate() -> tuple[float, float]:
        frozen = _with(initial, param.detach().clone().cpu())
        with torch.no_grad():
            logits = torch.cat([grad_last_logits(model, c.tokens, c.attention_mask,
                                                 frozen.hooks()).cpu() for c in val_b.chunks(32)])
        loss = float(torch.nn.functional.cross_entropy(logits, val_b.targets))
        acc = float((logits.argmax(-1) == val_b.targets).float().mean())
        return loss, acc

    fingerprint = _param_fingerprint(model)
    history: list[dict] = []
    with frozen_parameters(model):
        val_loss, val_acc = validate()
        history.append({"step": 0, "train_loss": None, "val_loss": val_loss, "val_top1": val_acc,
                        "lr": lr})
        best = (val_acc, -val_loss, 0, param.detach().clone().cpu())
        rows: list[int] = []
        bar = tqdm(range(1, cfg.steps + 1), desc=f"finetune {task.name} {cfg.inject}/{cfg.init}",
                   disable=not progress, leave=False)
        for step in bar:
            if len(rows) < bs:
                perm = list(range(len(train_q)))
                order_rng.shuffle(perm)
                rows += perm
            batch, rows = train_b.select(rows[:bs]), rows[bs:]
            logits = grad_last_logits(model, batch.tokens, batch.attention_mask, live.hooks())
            loss = torch.nn.functional.cross_entropy(logits, batch.targets.to(logits.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % eval_every == 0 or step == cfg.steps:
                val_loss, val_acc = validate()
                history.append({"step": step, "train_loss": float(loss.detach()),
                                "val_loss": val_loss, "val_top1": val_acc,
                                "lr": sched.get_last_lr()[0]})
                if (val_acc, -val_loss) > best[:2]:
                    best = (val_acc, -val_loss, step, param.detach().clone().cpu())
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", val_top1=f"{val_acc:.2f}")
    if abs(_param_fingerprint(model) - fingerprint) > 1e-6 * max(1.0, abs(fingerprint)):
        raise AssertionError("model parameters changed during fine-tuning; only the vector may "
                             "be trained")
    return FinetuneResult(vector=_with(initial, best[3]), initial=initial, history=tuple(history),
                          best_step=best[2], lr=lr, config=cfg, train_pairs=tuple(train_q),
                          val_pairs=tuple(val_q))


# --- held-out comparison -------------------------------------------------------------------


def held_out_comparison(model: HookedTransformer, task: str | Task,
                        cfg: FinetuneConfig = FinetuneConfig(), *,
                        also: Sequence[str] = ("random_init", "finetuned_other"),
                        vectors=None, progress: bool = True) -> dict:
    """Held-out zero-shot top-1 of the baselines and the fine-tuned vectors of one task.

    Args:
        cfg: the main fine-tuning run ("finetuned").
        also: extra runs: "random_init" (same settings, init="random") and
            "finetuned_other" (the other injection, "fv" ↔ "dfv", same init).
        vectors: the extracted vectors, if computed (see ``finetune``).

    Returns:
        ``{"held_out_top1": {"zero_shot", "icl", "extracted", "finetuned", ...}, "n_test",
        "runs": {name: {...history...}}, "results": {name: FinetuneResult}}``.
    """
    task = task if isinstance(task, Task) else load_task(task)
    unknown = set(also) - {"random_init", "finetuned_other"}
    if unknown:
        raise ValueError(f"unknown comparison runs {sorted(unknown)}; choose from "
                         "('random_init', 'finetuned_other')")
    _, _, test_q = split_pairs(task, cfg)
    if vectors is None:
        vectors = extract_vectors(model, task, select=(cfg.selection,), k=cfg.k, seed=cfg.seed,
                                  shots=cfg.shots)
    train_split, _ = task.split(test_fraction=cfg.test_fraction, seed=cfg.seed)
    zs = zero_shot_prompts(model, test_q)
    top1 = {"zero_shot": evaluate(model, zs).top1,
            "icl": evaluate(model, icl_prompts(model, test_q, train_split, shots=cfg.shots,
                                               seed=cfg.seed)).top1}
    m = cfg.selection
    extracted = {"fv": vectors.fv[m].hooks(),
                 "dfv": vectors.dfv[m].hooks(scale=vectors.dfv_scale[m])}
    top1["extracted"] = evaluate(model, zs, fwd_hooks=extracted[cfg.inject]).top1
    other = "dfv" if cfg.inject == "fv" else "fv"
    runs = {"finetuned": cfg}
    if "random_init" in also:
        runs["random_init"] = dataclasses.replace(cfg, init="random")
    if "finetuned_other" in also:
        runs[f"finetuned_{other}"] = dataclasses.replace(cfg, inject=other)
        top1[f"extracted_{other}"] = evaluate(model, zs, fwd_hooks=extracted[other]).top1
    results, info = {}, {}
    for name, c in runs.items():
        res = finetune(model, task, c, vectors=vectors, progress=progress)
        results[name] = res
        top1[name] = evaluate(model, zs, fwd_hooks=res.vector.hooks()).top1
        info[name] = {"inject": c.inject, "init": c.init, "lr": res.lr,
                      "best_step": res.best_step, "history": list(res.history),
                      "layer": getattr(res.vector, "layer", None),
                      "n_heads": len(res.vector.heads)}
    return {"task": task.name, "n_test": len(test_q), "held_out_top1": top1, "runs": info,
            "results": results}


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
