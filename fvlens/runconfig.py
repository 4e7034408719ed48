"""``RunConfig``: the settings of ``fvlens run``, validated before any work is done.

Every field is recorded in results.json (``fvlens.pipeline.run_settings``); ``check_model``
checks what depends on the model. ``fvlens.plan`` re-exports it.
"""

from __future__ import annotations

import dataclasses

from fvlens.modeltype import Model

from fvlens.chat import CHAT_TEMPLATES
from fvlens.evaluation import TARGETS
from fvlens.heads.select import METHODS
from fvlens.tasks import DEFAULT_TASKS

__all__ = ["RunConfig", "INJECTIONS", "AIE_IMPLS", "FRAMES"]

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

    def check_model(self, model: Model) -> None:
        """Settings that depend on the model (raise before any work is done)."""
        total = model.cfg.n_layers * model.cfg.n_heads
        for k in (self.k, *self.k_sweep):
            if k > total:
                raise ValueError(f"k = {k} exceeds the model's {total} heads ("
                                 f"{model.cfg.n_layers} layers × {model.cfg.n_heads}); choose "
                                 f"k in [1, {total}]")


