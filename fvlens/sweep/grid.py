"""A sweep grid: models × tasks × selections × injections × K × seeds, read from TOML.

Every combination of the ``[grid]`` axes is one independent ``Job``; ``[run]`` holds the
``RunConfig`` fields every job shares and ``[load]`` the ``load_model`` keywords (``device``,
``dtype``). A job is named by the hash of its fully resolved settings and the fvlens version,
so its folder is the same on every rerun and a finished job is found again::

    [grid]
    model = ["smollm2-135m", {spec = "smollm2-135m", dtype = "bfloat16", name = "bf16"}]
    task = ["capitalize", "antonym"]
    select = ["aie", "attnlrp"]
    inject = ["fv"]            # [["fv", "dfv"]] evaluates both in one job
    k = [10, 20]
    seed = [0, 1]

    [run]
    n_samples = 25

    [load]
    device = "cuda"
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["AXES", "DTYPES", "Grid", "Job", "ModelSpec", "load_grid", "parse_grid"]

AXES = ("model", "task", "select", "inject", "k", "seed")
DTYPES = ("float32", "bfloat16", "float16", "float64")
LOAD_KEYS = ("device", "dtype")
_RUN_AXES = {"task": "tasks", "select": "select", "inject": "inject", "k": "k", "seed": "seed"}
HASH_CHARS = 16


def _fvlens_version() -> str:
    from fvlens import __version__

    return __version__


def _unknown(kind: str, got: Sequence[str], known: Sequence[str]) -> None:
    bad = [g for g in got if g not in known]
    if bad:
        hints = {b: difflib.get_close_matches(b, known, n=1) for b in bad}
        hint = "; ".join(f"{b!r} (did you mean {h[0]!r}?)" if h else repr(b)
                         for b, h in hints.items())
        raise ValueError(f"unknown {kind} {hint}; known: {', '.join(known)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One model of the grid: a ``load_model`` spec, its keywords and a display name."""

    spec: str
    device: str | None = None
    dtype: str = "float32"
    name: str = ""

    def __post_init__(self) -> None:
        if not self.spec:
            raise ValueError("a grid model needs a spec (e.g. 'smollm2-135m' or a path)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} of model {self.spec!r}: choose from {DTYPES}")
        if not self.name:
            label = self.spec if self.dtype == "float32" else f"{self.spec} {self.dtype}"
            object.__setattr__(self, "name", label)

    def load_kwargs(self) -> dict[str, Any]:
        """Keywords for ``fvlens.models.load_model``."""
        import torch

        return {"device": self.device, "dtype": getattr(torch, self.dtype)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Job:
    """One cell of the grid: ``fvlens.pipeline.run`` of one model on one setting."""

    model: ModelSpec
    tasks: tuple[str, ...]
    select: tuple[str, ...]
    inject: tuple[str, ...]
    k: int
    seed: int
    run: tuple[tuple[str, Any], ...] = ()

    def run_config(self):
        """The job's ``RunConfig`` (validated)."""
        from fvlens.pipeline import RunConfig

        fixed = dict(self.run)
        return RunConfig(tasks=self.tasks, select=self.select, inject=self.inject, k=self.k,
                         seed=self.seed, **fixed)

    def settings(self) -> dict[str, Any]:
        """Everything that decides the job's numbers: model, load keywords, full RunConfig."""
        return {"model": self.model.spec, "device": self.model.device,
                "dtype": self.model.dtype, "run_config": dataclasses.asdict(self.run_config())}

    @property
    def key(self) -> str:
        """Content hash of ``settings()`` and the fvlens version: the job's folder name."""
        blob = json.dumps({"settings": self.settings(), "fvlens": _fvlens_version()},
                          sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:HASH_CHARS]

    def label(self) -> dict[str, Any]:
        """The job's grid coordinates, for tables."""
        return {"model": self.model.name, "task": "+".join(self.tasks),
                "select": "+".join(self.select), "inject": "+".join(self.inject),
                "k": self.k, "seed": self.seed}

    def to_json(self) -> dict[str, Any]:
        return {"model": dataclasses.asdict(self.model), "tasks": list(self.tasks),
                "select": list(self.select), "inject": list(self.inject), "k": self.k,
                "seed": self.seed, "run": {k: v for k, v in self.run}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        run = tuple(sorted((k, _freeze(v)) for k, v in data.get("run", {}).items()))
        return cls(model=ModelSpec(**data["model"]), tasks=tuple(data["tasks"]),
                   select=tuple(data["select"]), inject=tuple(data["inject"]), k=int(data["k"]),
                   seed=int(data["seed"]), run=run)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Grid:
    """A parsed grid: its jobs in expansion order (duplicates removed)."""

    jobs: tuple[Job, ...]
    source: str = ""

    def __len__(self) -> int:
        return len(self.jobs)


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def _axis(table: Mapping[str, Any], name: str) -> list[Any]:
    if name not in table:
        raise ValueError(f"the grid has no {name!r} axis; give [grid] {name} = [...] "
                         f"(axes: {', '.join(AXES)})")
    values = table[name]
    values = values if isinstance(values, list) else [values]
    if not values:
        raise ValueError(f"grid axis {name!r} is empty")
    return values


def _names(value: Any, axis: str) -> tuple[str, ...]:
    """An axis value that is a name, or a list of names run together in one job."""
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"grid axis {axis!r}: each value is a name or a list of names, "
                         f"got {value!r}")
    return tuple(names)


def _model(value: Any, load: Mapping[str, Any]) -> ModelSpec:
    if isinstance(value, str):
        return ModelSpec(spec=value, **load)
    if isinstance(value, Mapping):
        _unknown("model key", list(value), ("spec", "name", *LOAD_KEYS))
        return ModelSpec(**(dict(load) | dict(value)))
    raise ValueError(f"a grid model is a spec string or a table {{spec = ..., dtype = ...}}, "
                     f"got {value!r}")


def _integers(values: list[Any], axis: str) -> list[int]:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"grid axis {axis!r} takes integers, got {values!r}")
    return values


def _run_table(table: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    from fvlens.pipeline import RunConfig

    fields = [f.name for f in dataclasses.fields(RunConfig)]
    axes = [k for k in table if k in _RUN_AXES.values() or k in _RUN_AXES]
    if axes:
        raise ValueError(f"[run] sets {axes}: those are grid axes; list them under [grid] "
                         f"({', '.join(AXES)})")
    _unknown("[run] field", list(table), fields)
    return tuple(sorted((k, _freeze(v)) for k, v in table.items()))


def parse_grid(data: Mapping[str, Any], *, source: str = "") -> Grid:
    """Expand a grid document (the parsed TOML) into its jobs.

    Args:
        data: ``{"grid": {axis: [values]}, "run": {RunConfig field: value},
            "load": {"device": ..., "dtype": ...}}``.
        source: where it came from, for messages.

    Returns:
        The grid, each job validated (``RunConfig``, known tasks) before anything runs.
    """
    _unknown("table", list(data), ("grid", "run", "load"))
    grid = data.get("grid")
    if not isinstance(grid, Mapping):
        raise ValueError(f"{source or 'the grid'} has no [grid] table with the axes "
                         f"{', '.join(AXES)}")
    _unknown("grid axis", list(grid), AXES)
    load = dict(data.get("load", {}))
    _unknown("[load] key", list(load), LOAD_KEYS)
    run = _run_table(data.get("run", {}))
    models = [_model(v, load) for v in _axis(grid, "model")]
    tasks = [_names(v, "task") for v in _axis(grid, "task")]
    selects = [_names(v, "select") for v in _axis(grid, "select")]
    injects = [_names(v, "inject") for v in _axis(grid, "inject")]
    ks = _integers(_axis(grid, "k"), "k")
    seeds = _integers(_axis(grid, "seed"), "seed")
    from fvlens.tasks import load_task

    for names in tasks:  # fail on an unknown task before anything runs
        for name in names:
            load_task(name)
    jobs: dict[str, Job] = {}
    for m, t, s, i, k, seed in itertools.product(models, tasks, selects, injects, ks, seeds):
        job = Job(model=m, tasks=t, select=s, inject=i, k=k, seed=seed, run=run)
        job.run_config()  # validates the combination
        jobs.setdefault(job.key, job)
    return Grid(jobs=tuple(jobs.values()), source=source)


def load_grid(path: str | Path) -> Grid:
    """Read and expand a TOML grid file (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no grid file {path}; write a TOML file with a [grid] table "
                                f"(see docs/sweep.md)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    return parse_grid(data, source=str(path))
