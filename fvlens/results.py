"""The results.json schema as typed objects: ``RunResult`` → ``TaskResult`` → ``Steered``.

``fvlens run`` builds a ``RunResult``; ``to_json()`` is exactly what results.json holds and
``from_json`` reads it back (``from_json(r.to_json()).to_json() == r.to_json()``). The report,
the plots and the docs read these objects; ``docs/results-json.md`` documents every key.
Keys a reader does not know are kept in ``extra`` so that nothing is lost on a round trip.
Every accuracy carries its ``n`` and a 95% Wilson interval of its top-1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from fvlens.heads.scores import Head, HeadScores

__all__ = ["Accuracy", "Failure", "Steered", "TaskResult", "RunResult", "wilson_interval",
           "BASELINES"]

BASELINES = ("zero_shot", "icl", "instruction")
Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``(nan, nan)`` when ``n == 0``)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Accuracy:
    """First-token accuracy of ``n`` queries: top-1, top-3 and the mean 0-based target rank."""

    top1: float
    top3: float | None = None
    mean_rank: float | None = None
    n: int | None = None

    @classmethod
    def of(cls, evaluation) -> Accuracy:
        """From an ``fvlens.evaluation.Evaluation``."""
        return cls(top1=evaluation.top1, top3=evaluation.top3,
                   mean_rank=float(evaluation.ranks.float().mean()) if len(evaluation.ranks)
                   else math.nan, n=len(evaluation.ranks))

    @property
    def ci95(self) -> tuple[float, float] | None:
        """95% Wilson interval of ``top1`` (None without ``n``)."""
        if self.n is None:
            return None
        return wilson_interval(round(self.top1 * self.n), self.n)

    def to_json(self, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {f"{prefix}top1": self.top1}
        for key in ("top3", "mean_rank", "n"):
            if getattr(self, key) is not None:
                out[f"{prefix}{key}"] = getattr(self, key)
        if self.ci95 is not None:
            out[f"{prefix}top1_ci95"] = list(self.ci95)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], prefix: str = "") -> Accuracy | None:
        if f"{prefix}top1" not in d:
            return None
        return cls(top1=d[f"{prefix}top1"], top3=d.get(f"{prefix}top3"),
                   mean_rank=d.get(f"{prefix}mean_rank"), n=d.get(f"{prefix}n"))

    @staticmethod
    def keys(prefix: str = "") -> set[str]:
        return {f"{prefix}{k}" for k in ("top1", "top3", "mean_rank", "n", "top1_ci95")}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Failure:
    """A test query the steered model gets wrong."""

    input: str
    target: str
    prediction: str
    rank: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Steered:
    """One selection × injection on the test queries, with the sweep that chose its setting.

    Attributes:
        accuracy: test accuracy with the vector injected.
        layer, layer_sweep: FV injection layer and the validation top-1 of every layer.
        scale, scale_sweep: DFV scale and the validation top-1 of every scale tried.
        failures: up to ``n_failures`` wrong answers.
    """

    accuracy: Accuracy
    layer: int | None = None
    layer_sweep: dict[int, float] = dataclasses.field(default_factory=dict)
    scale: float | None = None
    scale_sweep: dict[float, float] = dataclasses.field(default_factory=dict)
    failures: tuple[Failure, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = self.accuracy.to_json()
        if self.layer is not None:
            out |= {"layer": self.layer,
                    "layer_sweep": {str(k): v for k, v in self.layer_sweep.items()}}
        if self.scale is not None:
            out |= {"scale": self.scale,
                    "scale_sweep": {str(k): v for k, v in self.scale_sweep.items()}}
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], failures: list | None = None) -> Steered:
        acc = Accuracy.from_json(d)
        if acc is None:
            raise ValueError(f"a steered result needs 'top1'; got keys {sorted(d)}")
        return cls(accuracy=acc, layer=d.get("layer"),
                   layer_sweep={int(k): v for k, v in (d.get("layer_sweep") or {}).items()},
                   scale=d.get("scale"),
                   scale_sweep={float(k): v for k, v in (d.get("scale_sweep") or {}).items()},
                   failures=tuple(Failure(**f) for f in failures or ()))


_TASK_KEYS = {"n", "n_test", "mean_activation_prompts", "mean_activation_accuracy", "skipped",
              "steered", "heads", "failures", "head_scores", "k_sweep", "head_overlap",
              "flags", "n_multi_token_targets"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskResult:
    """Everything measured for one task (``results.json["tasks"][name]``).

    Attributes:
        n_test: test queries before filtering; ``n`` those the reference prompt answers
            correctly (every steered and zero-shot number is over these).
        baselines: ``{"zero_shot" | "icl" | "instruction": Accuracy}``.
        steered: ``{method: {injection: Steered}}``.
        heads: ``{method: selected heads, best first}``; ``head_scores`` their full scores.
        k_sweep: ``{method: {injection: {K: test top-1}}}``.
        head_overlap: the first two methods' top-k compared (``HeadScores.overlap``).
        flags: why a number should not be read at face value (small test set, zero-shot
            already high, multi-token targets …); flagged tasks are left out of averages.
        skipped: why the task was not run.
    """

    n_test: int | None = None
    n: int | None = None
    baselines: dict[str, Accuracy] = dataclasses.field(default_factory=dict)
    mean_activation_prompts: int | None = None
    mean_activation_accuracy: float | None = None
    steered: dict[str, dict[str, Steered]] = dataclasses.field(default_factory=dict)
    heads: dict[str, tuple[Head, ...]] = dataclasses.field(default_factory=dict)
    head_scores: dict[str, HeadScores] = dataclasses.field(default_factory=dict)
    k_sweep: dict[str, dict[str, dict[int, float]]] = dataclasses.field(default_factory=dict)
    head_overlap: dict[str, Any] | None = None
    flags: tuple[str, ...] = ()
    n_multi_token_targets: int | None = None
    skipped: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("n_test", "n", "mean_activation_prompts", "mean_activation_accuracy",
                    "n_multi_token_targets", "skipped"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for mode, acc in self.baselines.items():
            out |= acc.to_json(f"{mode}_")
        if self.flags:
            out["flags"] = list(self.flags)
        if self.steered:
            out["steered"] = {m: {i: s.to_json() for i, s in inj.items()}
                              for m, inj in self.steered.items()}
            out["failures"] = {m: {i: [f.to_json() for f in s.failures] for i, s in inj.items()}
                               for m, inj in self.steered.items()}
        if self.heads:
            out["heads"] = {m: [list(h) for h in hs] for m, hs in self.heads.items()}
        if self.head_scores:
            out["head_scores"] = {m: s.to_json() for m, s in self.head_scores.items()}
        if self.k_sweep:
            out["k_sweep"] = {m: {i: {str(k): v for k, v in ks.items()} for i, ks in inj.items()}
                              for m, inj in self.k_sweep.items()}
        if self.head_overlap is not None:
            out["head_overlap"] = self.head_overlap
        return out | self.extra

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TaskResult:
        baselines = {m: a for m in BASELINES if (a := Accuracy.from_json(d, f"{m}_"))}
        known = set(_TASK_KEYS).union(*(Accuracy.keys(f"{m}_") for m in BASELINES))
        fails = d.get("failures") or {}
        return cls(
            n_test=d.get("n_test"), n=d.get("n"), baselines=baselines,
            mean_activation_prompts=d.get("mean_activation_prompts"),
            mean_activation_accuracy=d.get("mean_activation_accuracy"),
            steered={m: {i: Steered.from_json(s, (fails.get(m) or {}).get(i))
                         for i, s in inj.items()} for m, inj in (d.get("steered") or {}).items()},
            heads={m: tuple((int(a), int(b)) for a, b in hs)
                   for m, hs in (d.get("heads") or {}).items()},
            head_scores={m: HeadScores.from_json(s)
                         for m, s in (d.get("head_scores") or {}).items()},
            k_sweep={m: {i: {int(k): v for k, v in ks.items()} for i, ks in inj.items()}
                     for m, inj in (d.get("k_sweep") or {}).items()},
            head_overlap=d.get("head_overlap"), flags=tuple(d.get("flags") or ()),
            n_multi_token_targets=d.get("n_multi_token_targets"), skipped=d.get("skipped"),
            extra={k: v for k, v in d.items() if k not in known})


_RUN_KEYS = {"model", "settings", "versions", "machine", "tasks", "timing", "seconds",
             "global_tasks"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunResult:
    """A whole run (``results.json``): settings, provenance, per-task results, timing."""

    model: str = "unknown model"
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    versions: dict[str, Any] = dataclasses.field(default_factory=dict)
    machine: dict[str, Any] = dataclasses.field(default_factory=dict)
    tasks: dict[str, TaskResult] = dataclasses.field(default_factory=dict)
    timing: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float | None = None
    global_tasks: tuple[str, ...] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "settings": self.settings,
                               "versions": self.versions, "machine": self.machine,
                               "tasks": {n: t.to_json() for n, t in self.tasks.items()},
                               "timing": self.timing}
        if self.seconds is not None:
            out["seconds"] = self.seconds
        if self.global_tasks is not None:
            out["global_tasks"] = list(self.global_tasks)
        return out | self.extra

    @classmethod
    def from_json(cls, d: Any) -> RunResult:
        """Read a results.json dictionary (of ``fvlens run`` or ``fvlens baseline``).

        Raises:
            ValueError: ``d`` is not a results object.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"results must be a JSON object, got {type(d).__name__}")
        tasks = d.get("tasks") or {}
        if not isinstance(tasks, Mapping):
            raise ValueError("results['tasks'] must map task names to records")
        return cls(model=str(d.get("model", "unknown model")),
                   settings=dict(d.get("settings") or {}),
                   versions=dict(d.get("versions") or {}), machine=dict(d.get("machine") or {}),
                   tasks={n: TaskResult.from_json(t) for n, t in tasks.items()},
                   timing=dict(d.get("timing") or {}), seconds=d.get("seconds"),
                   global_tasks=tuple(d["global_tasks"]) if d.get("global_tasks") else None,
                   extra={k: v for k, v in d.items() if k not in _RUN_KEYS})
