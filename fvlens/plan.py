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
from transformer_lens import HookedTransformer

from fvlens.activations import mean_of_correct
from fvlens.batch import DEFAULT_TEMPLATE, PromptBatch, Template
from fvlens.chat import CHAT_TEMPLATES, template_for
from fvlens.evaluate import TARGETS
from fvlens.heads.scores import Head, HeadScores
from fvlens.heads.select import METHODS, score_heads
from fvlens.injection import ResidualCache, layer_sweep, residual_cache, steered_evaluation
from fvlens.lastpos import LastTokenCache, last_token_cache, steered_last
from fvlens.instruct import (FormatChoice, InstructionFilter, activations_and_correct,
                             choose_answer_format, filter_instructions)
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
    chat_template: str = "none"
    answer_format: str = "auto"
    targets: str = "first"
    min_correct: int = 0
    n_instructions: int = 0
    samples_per_instruction: int = 0
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
        if self.chat_template not in CHAT_TEMPLATES:
            raise bad("chat_template", f"must be one of {CHAT_TEMPLATES}")
        if self.targets not in TARGETS:
            raise bad("targets", f"must be one of {TARGETS}")
        for name in ("min_correct", "n_instructions", "samples_per_instruction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(name, "must be an integer ≥ 0 (0: off)")
        if self.prompt_mode == "icl":
            for name, off in (("chat_template", "none"), ("answer_format", "auto"),
                              ("min_correct", 0), ("n_instructions", 0),
                              ("samples_per_instruction", 0)):
                if getattr(self, name) != off:
                    raise bad(name, f"applies to instruction prompts only: use "
                              f"prompt_mode='instruction' or leave it at {off!r}")
        if self.samples_per_instruction and not self.min_correct:
            raise bad("samples_per_instruction", "needs the instruction filter (min_correct "
                      "≥ 1): its samples are drawn from each kept instruction's correct prompts")

    def check_model(self, model: HookedTransformer) -> None:
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
    val_last: LastTokenCache
    template: Template = DEFAULT_TEMPLATE
    instructions: tuple = ()
    answer_format: FormatChoice | None = None
    instruction_filter: InstructionFilter | None = None
    _val_cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                         compare=False)

    def residual_cache(self, model: HookedTransformer) -> ResidualCache:
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

    def reference(self, model: HookedTransformer, queries: Sequence[Pair], cfg: RunConfig, *,
                  seed: int) -> PromptBatch:
        """The reference prompts (ICL from the train pool, or the plan's instructions in its
        template) of ``queries``."""
        return reference_prompts(model, self.instruction_task, queries, self.train_pool, cfg,
                                 seed=seed, template=self.template)


def reference_prompts(model: HookedTransformer, task: Task, queries: Sequence[Pair],
                      demos: Sequence[Pair] | Task, cfg: RunConfig, *, seed: int,
                      template: Template = DEFAULT_TEMPLATE) -> PromptBatch:
    """The prompt of ``cfg.prompt_mode`` (ICL with ``cfg.shots`` demonstrations, or the
    task's instructions cycling over the rows, written with ``template``) for ``queries``."""
    if cfg.prompt_mode == "icl":
        return icl_prompts(model, queries, demos, shots=cfg.shots, seed=seed)
    return instruction_prompts(model, task, queries, seed=seed, template=template)


def prepare_task(model: HookedTransformer, task: Task, cfg: RunConfig) -> TaskPlan:
    """Split the task; one pass over the clean prompts; scoring prompts; validation cache.

    Raises:
        ValueError: too few pairs, no instructions in instruction mode, no clean prompt
            answered correctly (no mean activation), or a task the instruction filter rejects.
    """
    instruction = cfg.prompt_mode == "instruction"
    if instruction and not task.instructions:
        raise ValueError(f"task {task.name!r} has no instructions, so instruction mode cannot "
                         "run it; add instructions to its file or use --prompt-mode icl")
    base = template_for(model, cfg.chat_template) if instruction else DEFAULT_TEMPLATE
    train, test = task.split(test_fraction=cfg.test_fraction, seed=cfg.seed)
    pairs = list(train.sample(len(train), seed=cfg.seed).pairs)
    need = cfg.shots + 4 if not instruction else 4
    if cfg.min_correct:
        need = max(need, cfg.n_val + cfg.min_correct)
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
    template, choice, filt, instructions = base, None, None, task.instructions
    if instruction:
        choice = choose_answer_format(model, task, val_q or mean_q, base, targets=cfg.targets,
                                      fixed=cfg.answer_format, seed=cfg.seed)
        template = choice.template
    pool = tuple(mean_q + val_q)
    score_seed = cfg.seed + 1
    if cfg.min_correct:
        filt = filter_instructions(model, task, mean_q, template, min_correct=cfg.min_correct,
                                   n_instructions=cfg.n_instructions, targets=cfg.targets,
                                   seed=cfg.seed)
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
                    val_queries=tuple(val_q), test_queries=tuple(test_q), clean=clean,
                    clean_correct=correct, mean_z=mean_z, scoring=scoring,
                    corrupted=corrupted(model, scoring, seed=score_seed), val=val,
                    val_last=last_token_cache(model, val), template=template,
                    instructions=tuple(instructions), answer_format=choice,
                    instruction_filter=filt)


def _sample_rows(correct: Tensor, n: int, seed: int) -> list[int]:
    """Up to ``n`` seeded rows among the correctly answered ones (all rows if none is)."""
    rows = correct.nonzero()[:, 0].tolist() or list(range(len(correct)))
    return sorted(random.Random(seed).sample(rows, min(n, len(rows))))


def score_task(model: HookedTransformer, plan: TaskPlan, method: str, cfg: RunConfig, *,
               progress: bool = False) -> HeadScores:
    """Head scores of one task by one method, on the plan's scoring prompts."""
    return score_heads(model, plan.scoring, method=method,
                       corrupted=plan.corrupted if method == "aie" else None,
                       mean_z=plan.mean_z, task=plan.task.name, frame=cfg.frame,
                       aie_impl=cfg.aie_impl, progress=progress)


def choose_layer(model: HookedTransformer, fv: FunctionVector, val: PromptBatch, *,
                 cache: ResidualCache | LastTokenCache | None = None
                 ) -> tuple[int, dict[int, float]]:
    """The injection layer with the best validation top-1 (ties: lower mean rank, then the
    lower layer), and the top-1 of every layer."""
    from fvlens.injection import best_layer

    if isinstance(cache, LastTokenCache):
        cache.check(val)
        evs = {layer: steered_last(model, cache, start=layer + 1, vector=fv.vector)
               for layer in range(model.cfg.n_layers)}
    else:
        evs = layer_sweep(model, val, fv.vector, cache=cache)
    return best_layer(evs), {layer: ev.top1 for layer, ev in evs.items()}


def choose_scale(model: HookedTransformer, dfv: DistributedFV, val: PromptBatch,
                 scales: Sequence[float], *,
                 cache: ResidualCache | LastTokenCache | None = None
                 ) -> tuple[float, dict[float, float]]:
    """The DFV scale with the best validation top-1 (ties: the smaller scale)."""
    cache = cache or residual_cache(model, val)
    cache.check(val)
    run = steered_last if isinstance(cache, LastTokenCache) else steered_evaluation
    sweep = {float(s): run(model, cache, start=dfv.first_layer(model),
                           fwd_hooks=dfv.hooks(scale=s)).top1 for s in scales}
    best = max(sorted(sweep), key=lambda s: sweep[s])
    return best, sweep


def build_vectors(model: HookedTransformer, plan: TaskPlan, heads: Sequence[Head],
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


def extract_vectors(model: HookedTransformer, task: str | Task, *,
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
