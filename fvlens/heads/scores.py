"""Head scores: one number per attention head saying how much it carries a task.

Every head-selection method (causal mediation / AIE, AttnLRP, gradients, ...) ends in the same
object: a ``[n_layers, n_heads]`` tensor where higher means more important, plus where it came
from. ``top_k`` turns it into the head set a function vector is built from; ``aggregate``
averages per-task scores into global ones over the tasks where the model beats chance
(Davidson et al.); ``overlap`` compares two selections (Pham et al., Figure 3).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["Head", "HeadScores", "PROMPT_MODES", "overlap"]

Head = tuple[int, int]
"""An attention head as ``(layer, head)``."""

PROMPT_MODES = ("icl", "instruction")
_FORMAT = "fvlens.HeadScores"
_FORMAT_VERSION = 1
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64}


def _as_head(obj: Any, where: str) -> Head:
    """``(layer, head)`` from a tuple or a JSON list ``[layer, head]``; anything else raises."""
    if (not isinstance(obj, (tuple, list)) or len(obj) != 2
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in obj)):
        raise ValueError(f"{where}: a head is a (layer, head) pair of ints, got {obj!r}")
    return (obj[0], obj[1])


def _heads(items: Sequence[Any], where: str) -> list[Head]:
    heads = [_as_head(h, where) for h in items]
    if len(set(heads)) != len(heads):
        dup = sorted({h for h in heads if heads.count(h) > 1})
        raise ValueError(f"{where} lists heads {dup} more than once; pass each head once")
    return heads


def overlap(a: Sequence[Head], b: Sequence[Head]) -> dict[str, Any]:
    """Compare two head selections.

    Args:
        a: heads of the first selection, ``(layer, head)`` pairs.
        b: heads of the second selection.

    Returns:
        ``{"shared": [...], "only_self": [...], "only_other": [...], "jaccard": float}``:
        heads in both (in ``a``'s order), only in ``a``, only in ``b`` (in ``b``'s order),
        and |a ∩ b| / |a ∪ b| (1.0 when both are empty: identical selections).
    """
    ha, hb = _heads(a, "overlap(a)"), _heads(b, "overlap(b)")
    sa, sb = set(ha), set(hb)
    shared = [h for h in ha if h in sb]
    union = len(sa | sb)
    return {
        "shared": shared,
        "only_self": [h for h in ha if h not in sb],
        "only_other": [h for h in hb if h not in sa],
        "jaccard": len(shared) / union if union else 1.0,
    }


def _check_scores(t: Any, what: str, method: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor [n_layers, n_heads], got {type(t).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{what} must be 2-D [n_layers, n_heads], got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{what} must be a float tensor, got {t.dtype}; convert with .float()")
    if not bool(torch.isfinite(t).all()):
        bad = [tuple(i) for i in (~torch.isfinite(t)).nonzero().tolist()][:5]
        raise ValueError(f"{what} of method {method!r} has non-finite values (NaN/inf) at "
                         f"(layer, head) {bad}; fix the scoring run (a NaN usually means a "
                         f"zero-sample mean or an overflow) before ranking heads")
    return t.detach().to("cpu").clone()


@dataclass(frozen=True, kw_only=True, eq=False)
class HeadScores:
    """Per-head importance scores of one selection method.

    Args:
        scores: ``[n_layers, n_heads]``; higher means more important.
        method: the method that produced them ("aie", "attnlrp", "gradient", ...).
        tasks: the tasks the scores were computed on (one for per-task scores).
        prompt_mode: "icl" or "instruction".
        n_samples: number of prompts averaged over.
        per_task: task -> ``[n_layers, n_heads]`` scores, when these are aggregated.
        meta: free-form JSON-serialisable provenance (seed, shots, ...).
    """

    scores: Float[Tensor, "n_layers n_heads"]
    method: str
    tasks: tuple[str, ...]
    prompt_mode: str
    n_samples: int
    per_task: dict[str, Tensor] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"method must be a non-empty string such as 'aie', got {self.method!r}")
        object.__setattr__(self, "scores", _check_scores(self.scores, "scores", self.method))
        if (not isinstance(self.tasks, tuple) or not self.tasks
                or not all(isinstance(t, str) and t for t in self.tasks)):
            raise ValueError(f"tasks must be a non-empty tuple of task names, got {self.tasks!r}")
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be one of {PROMPT_MODES}, got {self.prompt_mode!r}")
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, int) or self.n_samples < 0:
            raise ValueError(f"n_samples must be an int >= 0, got {self.n_samples!r}")
        if not isinstance(self.meta, dict):
            raise ValueError(f"meta must be a dict, got {type(self.meta).__name__}")
        object.__setattr__(self, "meta", dict(self.meta))
        if self.per_task is not None:
            if not isinstance(self.per_task, dict):
                raise ValueError(f"per_task must be a dict task -> tensor, got {type(self.per_task).__name__}")
            checked = {}
            for name, t in self.per_task.items():
                checked[name] = _check_scores(t, f"per_task[{name!r}]", self.method)
                if checked[name].shape != self.scores.shape:
                    raise ValueError(f"per_task[{name!r}] has shape {tuple(checked[name].shape)} but "
                                     f"scores has {tuple(self.scores.shape)}; all must be [n_layers, n_heads]")
            object.__setattr__(self, "per_task", checked)

    # -- basic views -----------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        return self.scores.shape[1]

    def __eq__(self, other: object) -> bool:
        """Exact equality: same values and dtype, same provenance."""
        if not isinstance(other, HeadScores):
            return NotImplemented
        same_per_task = (self.per_task is None) == (other.per_task is None) and (
            self.per_task is None or (
                self.per_task.keys() == other.per_task.keys()
                and all(torch.equal(v, other.per_task[k]) and v.dtype == other.per_task[k].dtype
                        for k, v in self.per_task.items())))
        return (self.scores.dtype == other.scores.dtype and torch.equal(self.scores, other.scores)
                and self.method == other.method and self.tasks == other.tasks
                and self.prompt_mode == other.prompt_mode and self.n_samples == other.n_samples
                and same_per_task and self.meta == other.meta)

    def __repr__(self) -> str:
        return (f"HeadScores(method={self.method!r}, tasks={self.tasks!r}, prompt_mode="
                f"{self.prompt_mode!r}, n_samples={self.n_samples}, shape={tuple(self.scores.shape)})")

    def _order(self) -> list[int]:
        """Flat indices sorted by score descending, ties by (layer, head) ascending."""
        flat = self.scores.flatten().tolist()
        return sorted(range(len(flat)), key=lambda i: (-flat[i], i))

    def top_k(self, k: int) -> list[Head]:
        """The ``k`` highest-scoring heads.

        Args:
            k: how many heads, 0 <= k <= n_layers * n_heads.

        Returns:
            ``(layer, head)`` pairs by score descending; ties broken by (layer, head) ascending.
        """
        total = self.n_layers * self.n_heads
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= total:
            raise ValueError(f"k must be an int in [0, {total}] (n_layers * n_heads = "
                             f"{self.n_layers} * {self.n_heads}), got {k!r}")
        return [divmod(i, self.n_heads) for i in self._order()[:k]]

    def rank(self) -> Int[Tensor, "n_layers n_heads"]:
        """Rank of every head in the ``top_k`` order.

        Returns:
            ``[n_layers, n_heads]`` int64, 0 = best.
        """
        ranks = torch.empty(self.n_layers * self.n_heads, dtype=torch.int64)
        ranks[torch.tensor(self._order(), dtype=torch.int64)] = torch.arange(ranks.numel())
        return ranks.view(self.n_layers, self.n_heads)

    def overlap(self, other: HeadScores, k: int) -> dict[str, Any]:
        """Compare the top-``k`` heads of two score sets (see the free function ``overlap``).

        Args:
            other: scores of the same model (same shape), e.g. another method or prompt mode.
            k: heads taken from each.

        Returns:
            ``{"shared", "only_self", "only_other", "jaccard"}``.
        """
        if other.scores.shape != self.scores.shape:
            raise ValueError(f"cannot compare scores of shape {tuple(self.scores.shape)} with "
                             f"{tuple(other.scores.shape)}: they come from different models")
        return overlap(self.top_k(k), other.top_k(k))

    # -- aggregation -----------------------------------------------------------------------

    @classmethod
    def aggregate(cls, per_task: Mapping[str, HeadScores], *,
                  include: Iterable[str] | None = None) -> HeadScores:
        """Global scores: the mean of per-task scores over the tasks in ``include``.

        Davidson et al. average only over tasks where the model beats chance; pass those
        names as ``include``.

        Args:
            per_task: task name -> that task's scores (same method, prompt mode and shape).
            include: the task names to average over; None = all.

        Returns:
            HeadScores with ``tasks`` = the included tasks, ``n_samples`` their sum,
            ``per_task`` their scores, and ``meta`` holding the entries all of them agree on
            plus ``aggregated_from`` / ``excluded_tasks``.
        """
        if not per_task:
            raise ValueError("per_task is empty; pass {task name: HeadScores} for at least one task")
        names = list(per_task)
        if include is None:
            chosen = names
        else:
            wanted = list(include)
            unknown = [t for t in wanted if t not in per_task]
            if unknown:
                raise ValueError(f"include names tasks {unknown} that are not in per_task; "
                                 f"available: {names}")
            chosen = [t for t in names if t in set(wanted)]
        if not chosen:
            raise ValueError("include selects no tasks; aggregate needs at least one (if the model "
                             "beats chance on none, there are no global scores to compute)")
        for name, hs in per_task.items():
            if not isinstance(hs, HeadScores):
                raise ValueError(f"per_task[{name!r}] must be HeadScores, got {type(hs).__name__}")
        first = per_task[chosen[0]]
        for name in chosen[1:]:
            hs = per_task[name]
            for attr in ("method", "prompt_mode"):
                if getattr(hs, attr) != getattr(first, attr):
                    raise ValueError(f"cannot aggregate: task {chosen[0]!r} has {attr}="
                                     f"{getattr(first, attr)!r} but {name!r} has {getattr(hs, attr)!r}; "
                                     f"aggregate one {attr} at a time")
            if hs.scores.shape != first.scores.shape:
                raise ValueError(f"cannot aggregate: task {chosen[0]!r} has shape "
                                 f"{tuple(first.scores.shape)} but {name!r} has {tuple(hs.scores.shape)}")
        dtype = torch.promote_types(torch.float32, first.scores.dtype)
        stacked = torch.stack([per_task[t].scores.to(dtype) for t in chosen])
        common = {key: val for key, val in first.meta.items()
                  if all(key in per_task[t].meta and per_task[t].meta[key] == val for t in chosen)}
        meta = common | {"aggregated_from": list(chosen),
                         "excluded_tasks": [t for t in names if t not in chosen]}
        return cls(scores=stacked.mean(0), method=first.method, tasks=tuple(chosen),
                   prompt_mode=first.prompt_mode,
                   n_samples=sum(per_task[t].n_samples for t in chosen),
                   per_task={t: per_task[t].scores for t in chosen}, meta=meta)

    # -- JSON ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; values are stored as Python floats, so the round trip is exact.

        Returns:
            ``{"format", "version", "method", "tasks", "prompt_mode", "n_samples", "dtype",
            "shape", "scores", "per_task", "meta"}``.
        """
        try:
            json.dumps(self.meta, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"meta must be JSON-serialisable (str/int/float/bool/None/list/dict) "
                             f"to save HeadScores: {err}") from None
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "method": self.method,
            "tasks": list(self.tasks),
            "prompt_mode": self.prompt_mode,
            "n_samples": self.n_samples,
            "dtype": str(self.scores.dtype).removeprefix("torch."),
            "shape": list(self.scores.shape),
            "scores": self.scores.double().tolist(),
            "per_task": None if self.per_task is None else {
                k: v.double().tolist() for k, v in self.per_task.items()},
            "meta": json.loads(json.dumps(self.meta)),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HeadScores:
        """Rebuild from ``to_json`` output.

        Args:
            d: the dict written by ``to_json``.

        Returns:
            HeadScores equal to the one saved.
        """
        if not isinstance(d, Mapping) or d.get("format") != _FORMAT:
            raise ValueError(f"not a HeadScores JSON object (expected 'format': {_FORMAT!r}); "
                             f"write one with HeadScores.to_json() / save()")
        if d.get("version") != _FORMAT_VERSION:
            raise ValueError(f"HeadScores JSON version {d.get('version')!r} is not supported "
                             f"(this fvlens reads version {_FORMAT_VERSION})")
        required = ("method", "tasks", "prompt_mode", "n_samples", "dtype", "scores")
        missing = [key for key in required if key not in d]
        if missing:
            raise ValueError(f"HeadScores JSON lacks keys {missing}")
        if d["dtype"] not in _DTYPES:
            raise ValueError(f"unknown dtype {d['dtype']!r}; expected one of {sorted(_DTYPES)}")
        dtype = _DTYPES[d["dtype"]]

        def tensor(values: Any) -> Tensor:
            return torch.tensor(values, dtype=torch.float64).to(dtype)

        per_task = d.get("per_task")
        return cls(scores=tensor(d["scores"]), method=d["method"], tasks=tuple(d["tasks"]),
                   prompt_mode=d["prompt_mode"], n_samples=d["n_samples"],
                   per_task=None if per_task is None else {k: tensor(v) for k, v in per_task.items()},
                   meta=dict(d.get("meta") or {}))

    def save(self, path: str | Path) -> Path:
        """Write ``to_json()`` to ``path`` (parent folders are created).

        Args:
            path: the ``.json`` file to write.

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), allow_nan=False))
        return path

    @classmethod
    def load(cls, path: str | Path) -> HeadScores:
        """Read a file written by ``save``.

        Args:
            path: the ``.json`` file.

        Returns:
            The saved HeadScores.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no HeadScores file at {path}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); write it with HeadScores.save()") from None
        return cls.from_json(d)
