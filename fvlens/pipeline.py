"""The main job: per task, select heads, build FV and DFV, and measure zero-shot accuracy.

``run`` prepares every task once (``fvlens.plan.prepare_task``), scores heads per method
(optionally averaged into global heads), then evaluates on the test split: only the test
queries the reference prompt (ICL, or instruction in instruction mode) answers correctly count
(Todd et al.). One unsteered pass over those zero-shot queries keeps a residual cache from
which every steered evaluation (FV at its layer, DFV from its lowest head, the K sweep)
resumes. Returns a typed ``fvlens.results.RunResult``; ``steer_report`` is ``fvlens steer``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from fvlens.evaluation import Evaluation, evaluate
from fvlens.generation import side_by_side
from fvlens.heads.scores import HeadScores
from fvlens.injection import ResidualCache, residual_cache, steered_evaluation
from fvlens.plan import (DEFAULT_TASKS, INJECTIONS, RunConfig, TaskPlan, build_vectors,
                         extract_vectors, prepare_task, reference_prompts, score_task)
from fvlens.prompts import instruction_prompts, target_ids, zero_shot_prompts
from fvlens.provenance import machine, versions
from fvlens.results import Accuracy, Failure, RunResult, Steered, TaskResult
from fvlens.steering import DistributedFV, FunctionVector
from fvlens.tasks import load_task
from fvlens.vectors import save_vector

__all__ = ["RunConfig", "DEFAULT_TASKS", "INJECTIONS", "run", "run_task", "run_settings",
           "extract_vectors",
           "steer_report", "STEER_INJECT", "MIN_N", "MAX_ZERO_SHOT"]

MIN_N = 20            # fewer kept test queries than this: the task is flagged "small test set"
MAX_ZERO_SHOT = 0.5   # unsteered zero-shot top-1 at or above this: flagged, nothing to steer


def _failures(model: HookedTransformer, queries, ev: Evaluation, n: int) -> tuple[Failure, ...]:
    rows = []
    for i in (ev.ranks > 0).nonzero()[:, 0].tolist()[:n]:
        rows.append(Failure(input=queries[i].input, target=queries[i].output,
                            prediction=model.tokenizer.decode([int(ev.predictions[i])]),
                            rank=int(ev.ranks[i])))
    return tuple(rows)


def _flags(res_n: int, zero_shot: float, n_multi: int) -> tuple[str, ...]:
    flags = []
    if res_n < MIN_N:
        flags.append(f"small test set: {res_n} queries (< {MIN_N}); intervals are wide")
    if zero_shot >= MAX_ZERO_SHOT:
        flags.append(f"zero-shot already answers {zero_shot:.2f} (≥ {MAX_ZERO_SHOT}) of the "
                     "kept queries: steering has little to show")
    if n_multi:
        flags.append(f"{n_multi} of the targets are several tokens; only the first is scored")
    return tuple(flags)


def run_task(model: HookedTransformer, plan: TaskPlan, scores: dict[str, HeadScores],
             cfg: RunConfig, *, vectors_dir: Path | None = None) -> TaskResult:
    """Baselines and steered zero-shot accuracy of one task on its test queries.

    Args:
        vectors_dir: when given, each method's FV, DFV and head scores are saved there as
            vector files (``fvlens.vectors``): ``{task}/{method}_{fv|dfv|scores}.safetensors``.
    """
    task = plan.task
    reference = reference_prompts(model, task, plan.test_queries, plan.train_pool, cfg,
                                  seed=cfg.seed)
    ref_ev = evaluate(model, reference)
    baselines = {cfg.prompt_mode: Accuracy.of(ref_ev)}
    if cfg.prompt_mode == "icl" and task.instructions:
        ins = instruction_prompts(model, task, plan.test_queries, seed=cfg.seed)
        baselines["instruction"] = Accuracy.of(evaluate(model, ins))
    keep = ref_ev.correct.nonzero()[:, 0].tolist()
    common = dict(n_test=len(plan.test_queries), n=len(keep),
                  mean_activation_prompts=len(plan.clean),
                  mean_activation_accuracy=plan.clean_accuracy)
    if not keep:
        fix = ("the model may not follow these instructions: try --prompt-mode icl or an "
               "instruction-tuned model" if cfg.prompt_mode == "instruction"
               else "try more --shots or another task")
        return TaskResult(baselines=baselines, **common,
                          skipped=f"the {cfg.prompt_mode} prompt answers none of the "
                                  f"{len(plan.test_queries)} test queries correctly; {fix}")
    queries = [plan.test_queries[i] for i in keep]
    zs = zero_shot_prompts(model, queries)
    cache = residual_cache(model, zs)
    baselines["zero_shot"] = Accuracy.of(cache.unsteered)
    n_multi = target_ids(model, [q.output for q in queries])[1]
    steered, heads, k_sweep = {}, {}, {}
    for method, sc in scores.items():
        top = sc.top_k(cfg.k)
        fv, lsweep, dfv, scale, ssweep = build_vectors(model, plan, top, cfg)
        res = {}
        if "fv" in cfg.inject:
            ev = steered_evaluation(model, cache, start=fv.layer + 1, vector=fv.vector)
            res["fv"] = Steered(accuracy=Accuracy.of(ev), layer=fv.layer, layer_sweep=lsweep,
                                failures=_failures(model, queries, ev, cfg.n_failures))
        if "dfv" in cfg.inject:
            ev = steered_evaluation(model, cache, start=dfv.first_layer(model),
                                    fwd_hooks=dfv.hooks(scale=scale))
            res["dfv"] = Steered(accuracy=Accuracy.of(ev), scale=scale, scale_sweep=ssweep,
                                 failures=_failures(model, queries, ev, cfg.n_failures))
        steered[method], heads[method] = res, tuple(top)
        if vectors_dir is not None:
            _save_vectors(model, vectors_dir / task.name, method, sc, fv, dfv, scale, cfg)
        if cfg.k_sweep:
            k_sweep[method] = _k_sweep(model, plan, sc, cache, fv.layer, scale, cfg)
    overlap = None
    if len(scores) >= 2:
        a, b = (scores[m] for m in cfg.select[:2])
        overlap = a.overlap(b, cfg.k)
    return TaskResult(baselines=baselines, **common, steered=steered, heads=heads,
                      head_scores=dict(scores), k_sweep=k_sweep, head_overlap=overlap,
                      n_multi_token_targets=n_multi,
                      flags=_flags(len(keep), cache.unsteered.top1, n_multi))


def _save_vectors(model: HookedTransformer, folder: Path, method: str, scores: HeadScores,
                  fv: FunctionVector, dfv: DistributedFV, scale: float, cfg: RunConfig) -> None:
    common = {"task": folder.name, "select": method, "k": cfg.k,
              "prompt_mode": cfg.prompt_mode, "seed": cfg.seed, "heads": cfg.heads}
    save_vector(scores, folder / f"{method}_scores.safetensors", model, meta=common)
    if "fv" in cfg.inject:
        save_vector(fv, folder / f"{method}_fv.safetensors", model, meta=common)
    if "dfv" in cfg.inject:
        save_vector(dfv, folder / f"{method}_dfv.safetensors", model,
                    meta=common | {"scale": scale})


def _k_sweep(model: HookedTransformer, plan: TaskPlan, sc: HeadScores, cache: ResidualCache,
             layer: int, scale: float, cfg: RunConfig) -> dict[str, dict[int, float]]:
    """Test top-1 for each K at the layer and scale chosen for the default K."""
    out: dict[str, dict[int, float]] = {inj: {} for inj in cfg.inject}
    for k in cfg.k_sweep:
        heads = sc.top_k(k)
        if "fv" in cfg.inject:
            fv = FunctionVector.from_heads(model, plan.mean_z, heads)
            out["fv"][k] = steered_evaluation(model, cache, start=layer + 1,
                                              vector=fv.vector).top1
        if "dfv" in cfg.inject:
            dfv = DistributedFV.from_heads(model, plan.mean_z, heads)
            out["dfv"][k] = steered_evaluation(model, cache, start=dfv.first_layer(model),
                                               fwd_hooks=dfv.hooks(scale=scale)).top1
    return out


def run(model: HookedTransformer, cfg: RunConfig, *, progress: bool = True,
        on_task: Callable[[RunResult], None] | None = None,
        done: dict[str, TaskResult] | None = None,
        vectors_dir: str | Path | None = None) -> RunResult:
    """The main job over ``cfg.tasks``.

    Args:
        model: the model.
        cfg: the settings (checked against the model before any work).
        progress: show progress bars.
        on_task: called with the results so far after each finished task (e.g. to write
            results.json as the run goes).
        done: results of tasks already finished with the same settings (``--resume``); they
            are kept as they are and not run again (per-task heads only).
        vectors_dir: save every task's vectors and head scores there (``run_task``).

    Returns:
        The run's results (``.to_json()`` is results.json).
    """
    cfg.check_model(model)
    done = dict(done or {})
    if done and cfg.heads == "global":
        raise ValueError("resuming needs per-task heads: global heads average the scores of "
                         "every task, so a resumed run would change them; rerun from scratch")
    tasks = [load_task(t) for t in cfg.tasks]
    meta = getattr(model, "fvlens_meta", {})
    result = RunResult(model=meta.get("name", model.cfg.model_name),
                       settings=run_settings(model, cfg), versions=versions(), machine=machine(),
                       tasks={t.name: done[t.name] for t in tasks if t.name in done})
    tasks = [t for t in tasks if t.name not in done]
    t_start = time.perf_counter()
    plans: dict[str, TaskPlan] = {}
    scores: dict[str, dict[str, HeadScores]] = {}
    timing = {m: {"samples": 0, "seconds": 0.0} for m in cfg.select}
    bar = tqdm(tasks, desc="fvlens run: heads", disable=not progress)
    for task in bar:
        bar.set_postfix_str(task.name)
        try:
            plans[task.name] = prepare_task(model, task, cfg)
        except ValueError as err:
            warnings.warn(f"task {task.name} skipped: {err}", stacklevel=2)
            result.tasks[task.name] = TaskResult(skipped=str(err))
            continue
        scores[task.name] = {}
        for method in cfg.select:
            sc = score_task(model, plans[task.name], method, cfg)
            scores[task.name][method] = sc
            timing[method]["samples"] += sc.n_samples
            timing[method]["seconds"] += sc.meta["seconds"]
    global_tasks = None
    if cfg.heads == "global" and scores:
        scores, global_tasks = _globalise(scores, plans, cfg)
    for name, plan in tqdm(plans.items(), desc="fvlens run: steering", disable=not progress):
        result.tasks[name] = run_task(model, plan, scores[name], cfg, vectors_dir=(
            None if vectors_dir is None else Path(vectors_dir)))
        if on_task is not None:
            on_task(result)
    for t in timing.values():
        t["samples_per_min"] = 60 * t["samples"] / t["seconds"] if t["seconds"] else None
    return dataclasses.replace(result, timing=timing, seconds=time.perf_counter() - t_start,
                               global_tasks=global_tasks)


def run_settings(model: HookedTransformer, cfg: RunConfig) -> dict:
    """The ``settings`` of results.json: every ``RunConfig`` field, the weight processing, and
    the model's dtype and device."""
    meta = getattr(model, "fvlens_meta", {})
    extra = {"processing": meta.get("processing"), "dtype": meta.get("dtype"),
             "device": str(model.cfg.device)}
    return json.loads(json.dumps(dataclasses.asdict(cfg) | extra))


def _globalise(scores: dict[str, dict[str, HeadScores]], plans: dict[str, TaskPlan],
               cfg: RunConfig) -> tuple[dict[str, dict[str, HeadScores]], tuple[str, ...]]:
    """One head set for all tasks: scores averaged over the tasks where the reference prompt
    beats chance (accuracy on the mean-activation prompts ≥ ``cfg.global_min_icl``)."""
    include = [n for n, p in plans.items() if p.clean_accuracy >= cfg.global_min_icl]
    if not include:
        raise ValueError(f"no task reaches {cfg.prompt_mode} accuracy "
                         f"{cfg.global_min_icl}; lower global_min_icl or use per-task heads")
    merged = {m: HeadScores.aggregate({n: scores[n][m] for n in scores}, include=include)
              for m in cfg.select}
    return {name: dict(merged) for name in scores}, tuple(sorted(include))


STEER_INJECT = INJECTIONS


def steer_report(model: HookedTransformer, prompt: str, *, task: str, select: str = "aie",
                 inject: str = "fv", k: int = 20, max_new_tokens: int = 20, seed: int = 0,
                 **config) -> dict:
    """Build a task's vector and generate with and without it (the ``fvlens steer`` command).

    The vector comes from ``fvlens.plan.extract_vectors``: an FV at the injection layer
    chosen on the task's validation split, or a DFV at the scale chosen there.

    Args:
        prompt: the prompt to continue.
        task: the task name (or path) the vector is extracted for.
        select: head-selection method.
        inject: "fv" (averaged FV at its chosen layer) or "dfv" (distributed FV).
        k: number of heads.
        max_new_tokens: tokens to generate (greedy).
        seed: seeds the extraction.
        config: other ``extract_vectors`` settings (``n_mean``, ``n_samples``, ``shots`` …).

    Returns:
        A JSON-ready dict: the settings, the vector's heads, layer (FV) or scale (DFV), and the
        ``side_by_side`` continuations ``prompt``/``unsteered``/``steered``.
    """
    if inject not in STEER_INJECT:
        raise ValueError(f"unknown inject {inject!r}; choose one of {STEER_INJECT}")
    vectors = extract_vectors(model, task, select=(select,), k=k, seed=seed,
                              inject=(inject,), **config)
    table = vectors.fv if inject == "fv" else vectors.dfv
    if select not in table:
        raise ValueError(f"no {inject} for select={select!r}; have {sorted(table)}")
    vector = table[select]
    if isinstance(vector, FunctionVector):
        layer, scale = vector.layer, 1.0
    else:
        layer, scale = None, float(vectors.dfv_scale.get(select, 1.0))
    texts = side_by_side(model, prompt, vector, max_new_tokens=max_new_tokens, scale=scale)
    return {"task": task, "select": select, "inject": inject, "k": k, "seed": seed,
            "max_new_tokens": max_new_tokens, "layer": layer, "scale": scale,
            "heads": [list(h) for h in vector.heads], **texts}
