"""The run plan: what a task needs, computed once, and the vectors built from it.

``prepare_task`` splits a task (all seeded) and does the work every selection method shares:
one forward pass over the clean prompts (their mean head activations and accuracy), the
head-scoring prompts (clean, and the corrupted batch derived from them), and one residual
cache of the zero-shot validation queries on which every FV layer sweep and DFV scale sweep
resumes. ``score_task`` scores heads by one method; ``build_vectors`` turns heads into an FV
(layer chosen on validation) and a DFV (scale chosen on validation); ``extract_vectors`` is all
of it for one task (``fvlens run`` adds the test split, ``fvlens.pipeline``).

Splits: a task's pairs split into train and test (``Task.split``). Train queries give the
clean prompts whose mean head activations make the vectors, the samples head scoring uses,
and the validation queries. Test queries are never used here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from jaxtyping import Bool, Float
from torch import Tensor

from fvlens.activations import last_token_head_activations, mean_of_correct
from fvlens.batch import PromptBatch
from fvlens.heads.scores import Head, HeadScores
from fvlens.heads.select import METHODS, score_heads
from fvlens.injection import ResidualCache, layer_sweep, residual_cache, steered_evaluation
from fvlens.modeltype import Model
from fvlens.prompts import corrupted, icl_prompts, instruction_prompts, zero_shot_prompts
from fvlens.steering import DistributedFV, FunctionVector
from fvlens.tasks import DEFAULT_TASKS, Pair, Task, load_task

__all__ = ["RunConfig", "TaskPlan", "Vectors", "DEFAULT_TASKS", "INJECTIONS", "prepare_task",
           "score_task", "choose_layer", "choose_scale", "build_vectors", "extract_vectors",
           "reference_prompts"]

INJECTIONS = ("fv", "dfv")
AIE_IMPLS = ("fast", "reference")
FRAMES = ("answers", "context")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Settings of ``fvlens run`` (every field is recorded in results.json)."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    prompt_mode: str = "icl"
    select: tuple[str, ...] = ("aie",)
    inject: tuple[str, ...] = INJECTIONS
    k: int = 20
    k_sweep: tuple[int, ...] = ()
    heads: str = "per-task"
    shots: int = 10
    n_mean: int = 30
    n_samples: int = 25
    n_val: int = 25
    n_test: int = 50
    test_fraction: float = 0.3
    dfv_scales: tuple[float, ...] = (1.0, 2.0, 4.0)
    global_min_icl: float = 0.25
    aie_impl: str = "fast"
    frame: str = "answers"
    n_failures: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name} {why}, got {getattr(self, name)!r}")

        if not self.tasks or any(not t for t in self.tasks):
            raise ValueError("tasks is empty: name at least one task (see `fvlens tasks`)")
        if self.prompt_mode not in ("icl", "instruction"):
            raise bad("prompt_mode", "must be 'icl' or 'instruction'")
        unknown = set(self.select) - set(METHODS)
        if unknown or not self.select:
            raise ValueError(f"unknown selection methods {sorted(unknown)}; choose from {METHODS}")
        unknown = set(self.inject) - set(INJECTIONS)
        if unknown or not self.inject:
            raise ValueError(f"unknown injections {sorted(unknown)}; choose from {INJECTIONS}")
        if self.heads not in ("per-task", "global"):
            raise bad("heads", "must be 'per-task' or 'global'")
        for name in ("k", "n_mean", "n_samples", "n_val", "n_test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "must be an integer ≥ 1")
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 0:
            raise bad("shots", "must be an integer ≥ 0")
        if self.prompt_mode == "icl" and self.shots < 1:
            raise bad("shots", "must be ≥ 1 in ICL mode (a 0-shot ICL prompt is the zero-shot "
                      "baseline)")
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.k_sweep):
            raise bad("k_sweep", "must hold integers ≥ 1")
        if not 0.0 < self.test_fraction < 1.0:
            raise bad("test_fraction", "must be in (0, 1)")
        if not self.dfv_scales or any(not s > 0 for s in self.dfv_scales):
            raise bad("dfv_scales", "must be positive numbers (at least one)")
        if not 0.0 <= self.global_min_icl <= 1.0:
            raise bad("global_min_icl", "must be in [0, 1]")
        if self.aie_impl not in AIE_IMPLS:
            raise bad("aie_impl", f"must be one of {AIE_IMPLS}")
        if self.frame not in FRAMES:
            raise bad("frame", f"must be one of {FRAMES}")
        if self.n_failures < 0:
            raise bad("n_failures", "must be ≥ 0")

    def check_model(self, model: Model) -> None:
        """Settings that depend on the model (raise before any work is done)."""
        total = model.cfg.n_layers * model.cfg.n_heads
        for k in (self.k, *self.k_sweep):
            if k > total:
                raise ValueError(f"k = {k} exceeds the model's {total} heads ("
                                 f"{model.cfg.n_layers} layers × {model.cfg.n_heads}); choose "
                                 f"k in [1, {total}]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskPlan:
    """A task's splits and everything computed once for it.

    Attributes:
        task: the task.
        train_pool: the training queries that demonstrations of scoring and test prompts are
            drawn from (mean-activation and validation queries).
        mean_queries, val_queries, test_queries: the splits.
        clean: the clean prompts of ``mean_queries`` (ICL or instruction).
        clean_correct: whether the model answers each clean prompt correctly.
        mean_z: mean head activations over the correctly answered clean prompts.
        scoring: the clean head-scoring prompts; ``corrupted`` their derived corrupted twins.
        val: zero-shot prompts of the validation queries; ``val_cache`` their residual cache.
    """

    task: Task
    train: Task
    train_pool: tuple[Pair, ...]
    mean_queries: tuple[Pair, ...]
    val_queries: tuple[Pair, ...]
    test_queries: tuple[Pair, ...]
    clean: PromptBatch
    clean_correct: Bool[Tensor, " n_mean"]
    mean_z: Float[Tensor, "n_layers n_heads d_head"]
    scoring: PromptBatch
    corrupted: PromptBatch
    val: PromptBatch
    val_cache: ResidualCache

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())


def reference_prompts(model: Model, task: Task, queries: Sequence[Pair],
                      demos: Sequence[Pair] | Task, cfg: RunConfig, *, seed: int) -> PromptBatch:
    """The prompt of ``cfg.prompt_mode`` (ICL with ``cfg.shots`` demonstrations, or the
    task's instructions) for ``queries``."""
    if cfg.prompt_mode == "icl":
        return icl_prompts(model, queries, demos, shots=cfg.shots, seed=seed)
    return instruction_prompts(model, task, queries, seed=seed)


def prepare_task(model: Model, task: Task, cfg: RunConfig) -> TaskPlan:
    """Split the task; one pass over the clean prompts; scoring prompts; validation cache.

    Raises:
        ValueError: too few pairs, no instructions in instruction mode, or no clean prompt
            answered correctly (no mean activation).
    """
    if cfg.prompt_mode == "instruction" and not task.instructions:
        raise ValueError(f"task {task.name!r} has no instructions, so instruction mode cannot "
                         "run it; add instructions to its file or use --prompt-mode icl")
    train, test = task.split(test_fraction=cfg.test_fraction, seed=cfg.seed)
    pairs = list(train.sample(len(train), seed=cfg.seed).pairs)
    need = cfg.shots + 4 if cfg.prompt_mode == "icl" else 4
    if len(pairs) < need:
        raise ValueError(f"task {task.name!r} has {len(pairs)} training pairs; it needs "
                         f"{need}" + (f" for {cfg.shots}-shot prompts (lower --shots)"
                                      if cfg.prompt_mode == "icl" else ""))
    n_mean = min(cfg.n_mean, len(pairs) // 2)
    mean_q, val_q = pairs[:n_mean], pairs[n_mean:n_mean + cfg.n_val]
    test_q = list(test.pairs)
    if len(test_q) > cfg.n_test:
        test_q = list(test.sample(cfg.n_test, seed=cfg.seed).pairs)
    clean = reference_prompts(model, task, mean_q, train, cfg, seed=cfg.seed)
    z, correct = last_token_head_activations(model, clean)
    mean_z = mean_of_correct(z, correct, clean)
    pool = tuple(mean_q + val_q)
    score_seed = cfg.seed + 1
    queries = Task(name=task.name, description="", pairs=pool).sample(
        min(cfg.n_samples, len(pool)), seed=score_seed).pairs
    scoring = reference_prompts(model, task, queries, pool, cfg, seed=score_seed)
    val = zero_shot_prompts(model, val_q or mean_q)
    return TaskPlan(task=task, train=train, train_pool=pool, mean_queries=tuple(mean_q),
                    val_queries=tuple(val_q), test_queries=tuple(test_q), clean=clean,
                    clean_correct=correct, mean_z=mean_z, scoring=scoring,
                    corrupted=corrupted(model, scoring, seed=score_seed), val=val,
                    val_cache=residual_cache(model, val))


def score_task(model: Model, plan: TaskPlan, method: str, cfg: RunConfig, *,
               progress: bool = False) -> HeadScores:
    """Head scores of one task by one method, on the plan's scoring prompts."""
    return score_heads(model, plan.scoring, method=method,
                       corrupted=plan.corrupted if method == "aie" else None,
                       mean_z=plan.mean_z, task=plan.task.name, frame=cfg.frame,
                       aie_impl=cfg.aie_impl, progress=progress)


def choose_layer(model: Model, fv: FunctionVector, val: PromptBatch, *,
                 cache: ResidualCache | None = None) -> tuple[int, dict[int, float]]:
    """The injection layer with the best validation top-1 (ties: lower mean rank, then the
    lower layer), and the top-1 of every layer."""
    from fvlens.injection import best_layer

    evs = layer_sweep(model, val, fv.vector, cache=cache)
    return best_layer(evs), {layer: ev.top1 for layer, ev in evs.items()}


def choose_scale(model: Model, dfv: DistributedFV, val: PromptBatch,
                 scales: Sequence[float], *, cache: ResidualCache | None = None
                 ) -> tuple[float, dict[float, float]]:
    """The DFV scale with the best validation top-1 (ties: the smaller scale)."""
    cache = cache or residual_cache(model, val)
    cache.check(val)
    sweep = {float(s): steered_evaluation(model, cache, start=dfv.first_layer(model),
                                          fwd_hooks=dfv.hooks(scale=s)).top1 for s in scales}
    best = max(sorted(sweep), key=lambda s: sweep[s])
    return best, sweep


def build_vectors(model: Model, plan: TaskPlan, heads: Sequence[Head],
                  cfg: RunConfig) -> tuple[FunctionVector, dict, DistributedFV, float, dict]:
    """FV (layer chosen on validation) and DFV (scale chosen on validation) from ``heads``.

    Returns:
        ``(fv, layer_sweep, dfv, scale, scale_sweep)``; a sweep is ``{}`` and the FV layer 0 /
        DFV scale 1 when that injection is not in ``cfg.inject``.
    """
    fv = FunctionVector.from_heads(model, plan.mean_z, heads)
    layer, lsweep = (choose_layer(model, fv, plan.val, cache=plan.val_cache)
                     if "fv" in cfg.inject else (0, {}))
    dfv = DistributedFV.from_heads(model, plan.mean_z, heads)
    scale, ssweep = (choose_scale(model, dfv, plan.val, cfg.dfv_scales, cache=plan.val_cache)
                     if "dfv" in cfg.inject else (1.0, {}))
    return fv.with_layer(layer), lsweep, dfv, scale, ssweep


@dataclasses.dataclass(frozen=True, kw_only=True)
class Vectors:
    """A task's vectors per selection method, with the sweeps that chose their settings."""

    plan: TaskPlan
    scores: dict[str, HeadScores]
    fv: dict[str, FunctionVector]
    dfv: dict[str, DistributedFV]
    dfv_scale: dict[str, float]
    layer_sweep: dict[str, dict[int, float]]
    scale_sweep: dict[str, dict[float, float]]


def extract_vectors(model: Model, task: str | Task, *,
                    select: Sequence[str] = ("aie",), k: int = 20, seed: int = 0,
                    prompt_mode: str = "icl", progress: bool = False, **config) -> Vectors:
    """Select heads and build a task's FV and DFV per method (the vectors only, no test).

    Args:
        task: a task name, path or Task.
        select: head-selection methods.
        k: heads per vector.
        config: any other ``RunConfig`` field (shots, n_mean, n_samples, …).
    """
    task = task if isinstance(task, Task) else load_task(task)
    cfg = RunConfig(tasks=(task.name,), select=tuple(select), k=k, seed=seed,
                    prompt_mode=prompt_mode, **config)
    cfg.check_model(model)
    plan = prepare_task(model, task, cfg)
    out = Vectors(plan=plan, scores={}, fv={}, dfv={}, dfv_scale={}, layer_sweep={},
                  scale_sweep={})
    for method in cfg.select:
        scores = score_task(model, plan, method, cfg, progress=progress)
        fv, lsweep, dfv, scale, ssweep = build_vectors(model, plan, scores.top_k(k), cfg)
        out.scores[method], out.fv[method], out.dfv[method] = scores, fv, dfv
        out.dfv_scale[method], out.layer_sweep[method], out.scale_sweep[method] = \
            scale, lsweep, ssweep
    return out
