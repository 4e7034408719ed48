"""The run plan: what a task needs, computed once, and the vectors built from it.

``prepare_task`` splits a task (all seeded) and does the work every selection method shares:
one forward pass over the clean prompts (their mean head activations and accuracy), the
head-scoring prompts (clean, and the corrupted batch derived from them), and one last-token
cache of the zero-shot validation queries (``fvlens.lastpos``: the prefix's keys and values
kept once) on which every FV layer sweep and DFV scale sweep recomputes only the last token. ``score_task`` scores heads by one method; ``build_vectors`` turns heads into an FV
(layer chosen on validation) and a DFV (scale chosen on validation); ``extract_vectors`` is all
of it for one task (``fvlens run`` adds the test split, ``fvlens.pipeline``).

Splits: a task's pairs split into train and test (``Task.split``). Train queries give the
clean prompts whose mean head activations make the vectors, the samples head scoring uses,
and the validation queries. Test queries are never used here.

Instruction mode (``fvlens.instruct``): the prompts may sit in the model's chat template
(``chat_template="auto"``); the answer format (no-space or space target, forced reply prefix)
is chosen on the validation queries' instruction prompts; with ``min_correct`` > 0 Pham et
al.'s filter keeps the instructions that answer at least that many training queries
correctly, skips the task without ``n_instructions`` of them, takes the mean activations over
their correctly answered prompts and draws ``samples_per_instruction`` scoring samples from
each. Validation then runs on the same template's zero-shot prompts (no instruction).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from jaxtyping import Bool, Float
from torch import Tensor

from fvlens.activations import mean_of_correct
from fvlens.batch import DEFAULT_TEMPLATE, PromptBatch, Template
from fvlens.chat import template_for
from fvlens.heads.scores import Head, HeadScores
from fvlens.heads.select import score_heads
from fvlens.injection import ResidualCache, layer_sweep, residual_cache
from fvlens.modeltype import Model
from fvlens.lastpos import LastTokenCache, StepCache, step_cache, steered
from fvlens.instruct import (FormatChoice, InstructionFilter, activations_and_correct,
                             choose_answer_format, filter_instructions)
from fvlens.prompts import corrupted, icl_prompts, instruction_prompts, zero_shot_prompts
from fvlens.runconfig import INJECTIONS, RunConfig
from fvlens.steering import DistributedFV, FunctionVector
from fvlens.tasks import DEFAULT_TASKS, Pair, Task, load_task

__all__ = ["RunConfig", "TaskPlan", "Vectors", "Splits", "DEFAULT_TASKS", "INJECTIONS",
           "task_splits", "screen_task", "prepare_task",
           "score_task", "choose_layer", "choose_scale", "build_vectors", "extract_vectors",
           "reference_prompts"]

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
        val: zero-shot prompts of the validation queries; ``val_last`` their last-token cache
            (``val_cache``, their residual cache, is built on first use).
        template: how instruction and zero-shot prompts are written (chat wrapping and the
            answer format chosen on validation); the default template in ICL mode.
        instructions: the instructions used (those kept by the filter; all without it).
        answer_format: the validation scores the template was chosen by (instruction mode).
        instruction_filter: what the filter evaluated and kept (None without it).
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
    val_last: StepCache
    template: Template = DEFAULT_TEMPLATE
    instructions: tuple = ()
    answer_format: FormatChoice | None = None
    instruction_filter: InstructionFilter | None = None
    _val_cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                         compare=False)

    def residual_cache(self, model: Model) -> ResidualCache:
        """The validation prompts' residual cache (``fvlens.injection``), built once."""
        if "cache" not in self._val_cache:
            self._val_cache["cache"] = residual_cache(model, self.val)
        return self._val_cache["cache"]

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    @property
    def instruction_task(self) -> Task:
        """The task with the instructions the plan uses."""
        return dataclasses.replace(self.task, instructions=self.instructions or
                                   self.task.instructions)

    def reference(self, model: Model, queries: Sequence[Pair], cfg: RunConfig, *,
                  seed: int) -> PromptBatch:
        """The reference prompts (ICL from the train pool, or the plan's instructions in its
        template) of ``queries``."""
        return reference_prompts(model, self.instruction_task, queries, self.train_pool, cfg,
                                 seed=seed, template=self.template)


def reference_prompts(model: Model, task: Task, queries: Sequence[Pair],
                      demos: Sequence[Pair] | Task, cfg: RunConfig, *, seed: int,
                      template: Template = DEFAULT_TEMPLATE) -> PromptBatch:
    """The prompt of ``cfg.prompt_mode`` (ICL with ``cfg.shots`` demonstrations, or the
    task's instructions cycling over the rows, written with ``template``) for ``queries``."""
    if cfg.prompt_mode == "icl":
        return icl_prompts(model, queries, demos, shots=cfg.shots, seed=seed)
    return instruction_prompts(model, task, queries, seed=seed, template=template)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Splits:
    """A task's seeded splits: ``mean`` (clean prompts; with the filter every non-validation
    training query), ``val``, ``test``; ``pool`` = mean + val (scoring queries, demos)."""

    train: Task
    mean: tuple[Pair, ...]
    val: tuple[Pair, ...]
    test: tuple[Pair, ...]

    @property
    def pool(self) -> tuple[Pair, ...]:
        return self.mean + self.val


def task_splits(task: Task, cfg: RunConfig) -> Splits:
    """The splits ``prepare_task`` uses (raises when the task has too few pairs)."""
    instruction = cfg.prompt_mode == "instruction"
    train, test = task.split(test_fraction=cfg.test_fraction, seed=cfg.seed)
    pairs = list(train.sample(len(train), seed=cfg.seed).pairs)
    need = max(cfg.shots + 4 if not instruction else 4,
               cfg.n_val + cfg.min_correct if cfg.min_correct else 0)
    if len(pairs) < need:
        raise ValueError(f"task {task.name!r} has {len(pairs)} training pairs; it needs "
                         f"{need}" + (f" for {cfg.shots}-shot prompts (lower --shots)"
                                      if not instruction else ""))
    if cfg.min_correct:  # validation first; every other training query may be asked
        val_q, mean_q = pairs[:cfg.n_val], pairs[cfg.n_val:]
    else:
        n_mean = min(cfg.n_mean, len(pairs) // 2)
        mean_q, val_q = pairs[:n_mean], pairs[n_mean:n_mean + cfg.n_val]
    test_q = list(test.pairs)
    if len(test_q) > cfg.n_test:
        test_q = list(test.sample(cfg.n_test, seed=cfg.seed).pairs)
    return Splits(train=train, mean=tuple(mean_q), val=tuple(val_q), test=tuple(test_q))


def screen_task(model: Model, task: Task, cfg: RunConfig
                ) -> tuple[Splits, FormatChoice, InstructionFilter | None]:
    """Instruction mode's first steps: splits, the answer format chosen on validation, and
    (with ``cfg.min_correct``) the instruction filter, which may reject the task."""
    if not task.instructions:
        raise ValueError(f"task {task.name!r} has no instructions, so instruction mode cannot "
                         "run it; add instructions to its file or use --prompt-mode icl")
    sp = task_splits(task, cfg)
    choice = choose_answer_format(model, task, sp.val or sp.mean,
                                  template_for(model, cfg.chat_template), targets=cfg.targets,
                                  fixed=cfg.answer_format, seed=cfg.seed)
    filt = None
    if cfg.min_correct:
        filt = filter_instructions(model, task, sp.mean, choice.template,
                                   min_correct=cfg.min_correct,
                                   n_instructions=cfg.n_instructions, targets=cfg.targets,
                                   seed=cfg.seed)
    return sp, choice, filt


def prepare_task(model: Model, task: Task, cfg: RunConfig) -> TaskPlan:
    """Split the task; one pass over the clean prompts; scoring prompts; validation cache.

    Raises:
        ValueError: too few pairs, no instructions in instruction mode, no clean prompt
            answered correctly (no mean activation), or a task the instruction filter rejects.
    """
    template, choice, filt, instructions = DEFAULT_TEMPLATE, None, None, task.instructions
    if cfg.prompt_mode == "instruction":
        sp, choice, filt = screen_task(model, task, cfg)
        template = choice.template
    else:
        sp = task_splits(task, cfg)
    train, mean_q, val_q, pool = sp.train, list(sp.mean), list(sp.val), sp.pool
    score_seed = cfg.seed + 1
    if filt is not None:
        if not filt.passed:
            raise ValueError(f"instruction filter: {filt.reason}")
        instructions = filt.kept
        clean, z, correct = filt.clean, filt.z, filt.correct
        mean_q = list(dict.fromkeys(clean.queries))
        if cfg.samples_per_instruction:
            scoring = filt.samples(cfg.samples_per_instruction, seed=score_seed)
        else:
            scoring = clean.select(_sample_rows(correct, cfg.n_samples, score_seed))
    else:
        used = dataclasses.replace(task, instructions=instructions)
        clean = reference_prompts(model, used, mean_q, train, cfg, seed=cfg.seed,
                                  template=template)
        z, correct = activations_and_correct(model, clean, targets=cfg.targets)
        queries = Task(name=task.name, description="", pairs=pool).sample(
            min(cfg.n_samples, len(pool)), seed=score_seed).pairs
        scoring = reference_prompts(model, used, queries, pool, cfg, seed=score_seed,
                                    template=template)
    mean_z = mean_of_correct(z, correct, clean)
    val = zero_shot_prompts(model, val_q or mean_q, template=template)
    return TaskPlan(task=task, train=train, train_pool=pool, mean_queries=tuple(mean_q),
                    val_queries=tuple(val_q), test_queries=sp.test, clean=clean,
                    clean_correct=correct, mean_z=mean_z, scoring=scoring,
                    corrupted=corrupted(model, scoring, seed=score_seed), val=val,
                    val_last=step_cache(model, val), template=template,
                    instructions=tuple(instructions), answer_format=choice,
                    instruction_filter=filt)


def _sample_rows(correct: Tensor, n: int, seed: int) -> list[int]:
    """Up to ``n`` seeded rows among the correctly answered ones (all rows if none is)."""
    rows = correct.nonzero()[:, 0].tolist() or list(range(len(correct)))
    return sorted(random.Random(seed).sample(rows, min(n, len(rows))))


def score_task(model: Model, plan: TaskPlan, method: str, cfg: RunConfig, *,
               progress: bool = False) -> HeadScores:
    """Head scores of one task by one method, on the plan's scoring prompts."""
    return score_heads(model, plan.scoring, method=method,
                       corrupted=plan.corrupted if method == "aie" else None,
                       mean_z=plan.mean_z, task=plan.task.name, frame=cfg.frame,
                       aie_impl=cfg.aie_impl, progress=progress)


def choose_layer(model: Model, fv: FunctionVector, val: PromptBatch, *,
                 cache: StepCache | None = None
                 ) -> tuple[int, dict[int, float]]:
    """The injection layer with the best validation top-1 (ties: lower mean rank, then the
    lower layer), and the top-1 of every layer."""
    from fvlens.injection import best_layer

    if isinstance(cache, LastTokenCache):
        cache.check(val)
        evs = {layer: steered(model, cache, start=layer + 1, vector=fv.vector)
               for layer in range(model.cfg.n_layers)}
    else:
        evs = layer_sweep(model, val, fv.vector, cache=cache)
    return best_layer(evs), {layer: ev.top1 for layer, ev in evs.items()}


def choose_scale(model: Model, dfv: DistributedFV, val: PromptBatch,
                 scales: Sequence[float], *,
                 cache: StepCache | None = None
                 ) -> tuple[float, dict[float, float]]:
    """The DFV scale with the best validation top-1 (ties: the smaller scale)."""
    cache = cache or residual_cache(model, val)
    cache.check(val)
    sweep = {float(s): steered(model, cache, start=dfv.first_layer(model),
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
    layer, lsweep = (choose_layer(model, fv, plan.val, cache=plan.val_last)
                     if "fv" in cfg.inject else (0, {}))
    dfv = DistributedFV.from_heads(model, plan.mean_z, heads)
    scale, ssweep = (choose_scale(model, dfv, plan.val, cfg.dfv_scales, cache=plan.val_last)
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
