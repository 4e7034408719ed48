"""The main job: per task, select heads, build FV and DFV, and measure zero-shot accuracy.

Splits (all seeded): a task's pairs split into train and test (``Task.split``). Train
queries give the clean prompts whose mean head activations make the vectors, the samples head
scoring uses, and a validation set on which the FV's injection layer and the DFV's scale are
chosen. Test queries are used only for the reported numbers, and only those the reference
prompt (ICL, or instruction in instruction mode) answers correctly (Todd et al.).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from fvlens.activations import mean_head_activations
from fvlens.evaluate import Evaluation, evaluate, layer_sweep
from fvlens.heads.scores import Head, HeadScores
from fvlens.heads.select import METHODS, score_heads
from fvlens.prompts import PromptBatch, icl_prompts, instruction_prompts, zero_shot_prompts
from fvlens.provenance import machine, versions
from fvlens.steering import DistributedFV, FunctionVector
from fvlens.tasks import Pair, Task, load_task

__all__ = ["RunConfig", "TaskData", "Vectors", "prepare_task", "extract_vectors", "run",
           "DEFAULT_TASKS"]

# Tasks SmolLM2-135M does in context (10-shot ICL top-1 ≥ 0.5) while zero-shot is ≈ 0.
DEFAULT_TASKS = ("capitalize", "present-past", "singular-plural", "antonym",
                 "capitalize_first_letter",
                 "choose_first_of_3")
INJECTIONS = ("fv", "dfv")


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
        if self.prompt_mode not in ("icl", "instruction"):
            raise ValueError(f"prompt_mode must be 'icl' or 'instruction', got {self.prompt_mode!r}")
        bad = set(self.select) - set(METHODS)
        if bad or not self.select:
            raise ValueError(f"unknown selection methods {sorted(bad)}; choose from {METHODS}")
        bad = set(self.inject) - set(INJECTIONS)
        if bad or not self.inject:
            raise ValueError(f"unknown injections {sorted(bad)}; choose from {INJECTIONS}")
        if self.heads not in ("per-task", "global"):
            raise ValueError(f"heads must be 'per-task' or 'global', got {self.heads!r}")
        for name in ("k", "shots", "n_mean", "n_samples", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskData:
    """A task's splits and prompts, and its mean head activations."""

    task: Task
    mean_queries: tuple[Pair, ...]
    val_queries: tuple[Pair, ...]
    test_queries: tuple[Pair, ...]
    clean: PromptBatch
    mean_z: Float[Tensor, "n_layers n_heads d_head"]
    clean_accuracy: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Vectors:
    """A task's vectors per selection method, with the sweeps that chose their settings."""

    data: TaskData
    scores: dict[str, HeadScores]
    fv: dict[str, FunctionVector]
    dfv: dict[str, DistributedFV]
    dfv_scale: dict[str, float]
    layer_sweep: dict[str, dict[int, float]]
    scale_sweep: dict[str, dict[float, float]]


def _reference_prompts(model, task: Task, queries, demos, cfg: RunConfig, *, seed: int,
                       corrupt: bool = False) -> PromptBatch:
    if cfg.prompt_mode == "icl":
        return icl_prompts(model, queries, demos, shots=cfg.shots, seed=seed,
                           shuffle_labels=corrupt)
    return instruction_prompts(model, task, queries, corrupt=corrupt, seed=seed)


def prepare_task(model: HookedTransformer, task: Task, cfg: RunConfig) -> TaskData:
    """Split the task, build the clean prompts and take their mean head activations."""
    train, test = task.split(test_fraction=cfg.test_fraction, seed=cfg.seed)
    pairs = list(train.sample(len(train), seed=cfg.seed).pairs)
    if len(pairs) < cfg.shots + 4:
        raise ValueError(f"task {task.name!r} has {len(pairs)} training pairs, too few for "
                         f"{cfg.shots}-shot prompts")
    n_mean = min(cfg.n_mean, len(pairs) // 2)
    mean_q, val_q = pairs[:n_mean], pairs[n_mean:n_mean + cfg.n_val]
    test_q = list(test.pairs)
    if len(test_q) > cfg.n_test:
        test_q = list(test.sample(cfg.n_test, seed=cfg.seed).pairs)
    clean = _reference_prompts(model, task, mean_q, train, cfg, seed=cfg.seed)
    ev = evaluate(model, clean)
    mean_z = mean_head_activations(model, clean)
    return TaskData(task=task, mean_queries=tuple(mean_q), val_queries=tuple(val_q),
                    test_queries=tuple(test_q), clean=clean, mean_z=mean_z,
                    clean_accuracy=ev.top1)


def score_task(model: HookedTransformer, data: TaskData, method: str, cfg: RunConfig,
               *, progress: bool = False) -> HeadScores:
    """Head scores of one task by one method, on ``cfg.n_samples`` training prompts."""
    train_pool = data.mean_queries + data.val_queries
    rng_seed = cfg.seed + 1
    queries = Task(name=data.task.name, description="", pairs=train_pool).sample(
        min(cfg.n_samples, len(train_pool)), seed=rng_seed).pairs
    clean = _reference_prompts(model, data.task, queries, train_pool, cfg, seed=rng_seed)
    corrupted = None
    if method == "aie":
        corrupted = _reference_prompts(model, data.task, queries, train_pool, cfg,
                                       seed=rng_seed, corrupt=True)
    return score_heads(model, clean, method=method, corrupted=corrupted, mean_z=data.mean_z,
                       task=data.task.name, frame=cfg.frame, aie_impl=cfg.aie_impl,
                       progress=progress)


def _val_batch(model, data: TaskData) -> PromptBatch:
    return zero_shot_prompts(model, data.val_queries or data.mean_queries)


def choose_layer(model: HookedTransformer, fv: FunctionVector, val: PromptBatch
                 ) -> tuple[int, dict[int, float]]:
    """The injection layer with the best validation top-1 (ties: lower mean rank)."""
    evs = layer_sweep(model, val, fv.vector)
    sweep = {layer: ev.top1 for layer, ev in evs.items()}
    ranks = {layer: float(ev.ranks.float().mean()) for layer, ev in evs.items()}
    best = max(sweep, key=lambda layer: (sweep[layer], -ranks[layer]))
    return best, sweep


def choose_scale(model: HookedTransformer, dfv: DistributedFV, val: PromptBatch,
                 scales: Sequence[float]) -> tuple[float, dict[float, float]]:
    """The DFV scale with the best validation top-1 (ties: the smaller scale)."""
    sweep = {float(s): evaluate(model, val, fwd_hooks=dfv.hooks(scale=s)).top1 for s in scales}
    best = max(sorted(sweep), key=lambda s: sweep[s])
    return best, sweep


def build_vectors(model: HookedTransformer, data: TaskData, heads: Sequence[Head],
                  cfg: RunConfig) -> tuple[FunctionVector, dict, DistributedFV, float, dict]:
    """FV (layer chosen on validation) and DFV (scale chosen on validation) from ``heads``."""
    val = _val_batch(model, data)
    fv = FunctionVector.from_heads(model, data.mean_z, heads)
    layer, layer_sweep = choose_layer(model, fv, val) if "fv" in cfg.inject else (0, {})
    dfv = DistributedFV.from_heads(model, data.mean_z, heads)
    scale, scale_sweep = (choose_scale(model, dfv, val, cfg.dfv_scales) if "dfv" in cfg.inject
                          else (1.0, {}))
    return fv.with_layer(layer), layer_sweep, dfv, scale, scale_sweep


def extract_vectors(model: HookedTransformer, task: str | Task, *, select: Sequence[str] = ("aie",),
                    k: int = 20, seed: int = 0, prompt_mode: str = "icl",
                    progress: bool = False, **config) -> Vectors:
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
    data = prepare_task(model, task, cfg)
    out = Vectors(data=data, scores={}, fv={}, dfv={}, dfv_scale={}, layer_sweep={},
                  scale_sweep={})
    for method in cfg.select:
        scores = score_task(model, data, method, cfg, progress=progress)
        fv, lsweep, dfv, scale, ssweep = build_vectors(model, data, scores.top_k(k), cfg)
        out.scores[method], out.fv[method], out.dfv[method] = scores, fv, dfv
        out.dfv_scale[method], out.layer_sweep[method], out.scale_sweep[method] = \
            scale, lsweep, ssweep
    return out


# --- the main job ------------------------------------------------------------------------


def _failures(model, batch: PromptBatch, ev: Evaluation, n: int) -> list[dict]:
    rows = []
    for i in (ev.ranks > 0).nonzero()[:, 0].tolist()[:n]:
        rows.append({"input": batch.queries[i].input, "target": batch.queries[i].output,
                     "prediction": model.tokenizer.decode([int(ev.predictions[i])]),
                     "rank": int(ev.ranks[i])})
    return rows


def _summary(ev: Evaluation) -> dict[str, float]:
    return {"top1": ev.top1, "top3": ev.top3, "mean_rank": float(ev.ranks.float().mean())}


def run_task(model: HookedTransformer, data: TaskData, scores: dict[str, HeadScores],
             cfg: RunConfig) -> dict:
    """Baselines and steered zero-shot accuracy of one task on its test queries."""
    task = data.task
    train_pool = data.mean_queries + data.val_queries
    reference = _reference_prompts(model, task, data.test_queries, train_pool, cfg, seed=cfg.seed)
    ref_ev = evaluate(model, reference)
    keep = ref_ev.correct.nonzero()[:, 0]
    out: dict = {"n_test": len(data.test_queries), "n": int(len(keep)),
                 f"{cfg.prompt_mode}_top1": ref_ev.top1, f"{cfg.prompt_mode}_top3": ref_ev.top3,
                 "mean_activation_prompts": len(data.clean),
                 "mean_activation_accuracy": data.clean_accuracy}
    if cfg.prompt_mode == "icl" and task.instructions:
        ins = instruction_prompts(model, task, data.test_queries, seed=cfg.seed)
        out["instruction_top1"] = evaluate(model, ins).top1
    if len(keep) == 0:
        out["skipped"] = f"the {cfg.prompt_mode} prompt answers no test query correctly"
        return out
    zs = zero_shot_prompts(model, [data.test_queries[i] for i in keep.tolist()])
    zs_ev = evaluate(model, zs)
    out["zero_shot_top1"], out["zero_shot_top3"] = zs_ev.top1, zs_ev.top3
    out["steered"], out["heads"], out["failures"] = {}, {}, {}
    out["head_scores"], out["k_sweep"] = {}, {}
    for method, sc in scores.items():
        heads = sc.top_k(cfg.k)
        fv, lsweep, dfv, scale, ssweep = build_vectors(model, data, heads, cfg)
        res, fails = {}, {}
        if "fv" in cfg.inject:
            ev = evaluate(model, zs, fwd_hooks=fv.hooks())
            res["fv"] = _summary(ev) | {"layer": fv.layer,
                                        "layer_sweep": {str(k): v for k, v in lsweep.items()}}
            fails["fv"] = _failures(model, zs, ev, cfg.n_failures)
        if "dfv" in cfg.inject:
            ev = evaluate(model, zs, fwd_hooks=dfv.hooks(scale=scale))
            res["dfv"] = _summary(ev) | {"scale": scale,
                                         "scale_sweep": {str(k): v for k, v in ssweep.items()}}
            fails["dfv"] = _failures(model, zs, ev, cfg.n_failures)
        out["steered"][method], out["failures"][method] = res, fails
        out["heads"][method] = [list(h) for h in heads]
        out["head_scores"][method] = sc.to_json()
        if cfg.k_sweep:
            out["k_sweep"][method] = _k_sweep(model, data, sc, zs, fv.layer, scale, cfg)
    if len(scores) == 2:
        a, b = (scores[m] for m in cfg.select)
        out["head_overlap"] = a.overlap(b, cfg.k)
    return out


def _k_sweep(model, data: TaskData, sc: HeadScores, zs: PromptBatch, layer: int, scale: float,
             cfg: RunConfig) -> dict:
    """Test top-1 for each K at the layer and scale chosen for the default K."""
    out: dict[str, dict[str, float]] = {inj: {} for inj in cfg.inject}
    for k in cfg.k_sweep:
        heads = sc.top_k(min(k, sc.scores.numel()))
        if "fv" in cfg.inject:
            fv = FunctionVector.from_heads(model, data.mean_z, heads, layer=layer)
            out["fv"][str(k)] = evaluate(model, zs, fwd_hooks=fv.hooks()).top1
        if "dfv" in cfg.inject:
            dfv = DistributedFV.from_heads(model, data.mean_z, heads)
            out["dfv"][str(k)] = evaluate(model, zs, fwd_hooks=dfv.hooks(scale=scale)).top1
    return out


def run(model: HookedTransformer, cfg: RunConfig, *, progress: bool = True) -> dict:
    """The main job over ``cfg.tasks``; returns the results.json dictionary."""
    tasks = [load_task(t) for t in cfg.tasks]
    results: dict = {"model": model.fvlens_meta["name"] if hasattr(model, "fvlens_meta")
                     else model.cfg.model_name,
                     "settings": dataclasses.asdict(cfg) | {
                         "processing": getattr(model, "fvlens_meta", {}).get("processing")},
                     "versions": versions(), "machine": machine(), "tasks": {}, "timing": {}}
    t_start = time.perf_counter()
    datas: dict[str, TaskData] = {}
    scores: dict[str, dict[str, HeadScores]] = {}
    timing = {m: {"samples": 0, "seconds": 0.0} for m in cfg.select}
    bar = tqdm(tasks, desc="fvlens run", disable=not progress)
    for task in bar:
        bar.set_postfix_str(task.name)
        try:
            datas[task.name] = prepare_task(model, task, cfg)
        except ValueError as err:
            warnings.warn(f"task {task.name} skipped: {err}", stacklevel=2)
            results["tasks"][task.name] = {"skipped": str(err)}
            continue
        scores[task.name] = {}
        for method in cfg.select:
            sc = score_task(model, datas[task.name], method, cfg)
            scores[task.name][method] = sc
            timing[method]["samples"] += sc.n_samples
            timing[method]["seconds"] += sc.meta["seconds"]
    if cfg.heads == "global" and scores:
        scores = _globalise(scores, datas, cfg)
        results["global_tasks"] = sorted(next(iter(scores.values()))[cfg.select[0]].tasks)
    for name, data in tqdm(datas.items(), desc="steering", disable=not progress):
        results["tasks"][name] = run_task(model, data, scores[name], cfg)
    for method, t in timing.items():
        t["samples_per_min"] = 60 * t["samples"] / t["seconds"] if t["seconds"] else None
    results["timing"] = timing
    results["seconds"] = time.perf_counter() - t_start
    return results


def _globalise(scores: dict[str, dict[str, HeadScores]], datas: dict[str, TaskData],
               cfg: RunConfig) -> dict[str, dict[str, HeadScores]]:
    """One head set for all tasks: scores averaged over the tasks where the reference prompt
    beats chance (accuracy on the mean-activation prompts ≥ ``cfg.global_min_icl``)."""
    include = [n for n, d in datas.items() if d.clean_accuracy >= cfg.global_min_icl]
    if not include:
        raise ValueError(f"no task reaches {cfg.prompt_mode} accuracy "
                         f"{cfg.global_min_icl}; lower global_min_icl or use per-task heads")
    merged = {m: HeadScores.aggregate({n: scores[n][m] for n in scores}, include=include)
              for m in cfg.select}
    return {name: dict(merged) for name in scores}
