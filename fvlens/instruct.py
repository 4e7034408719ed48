"""Instruction mode's own steps: the answer format chosen on validation, and Pham et al.'s filter.

- ``choose_answer_format``: the template's candidate answer formats (``fvlens.chat.answer_formats``:
  no-space or space targets, a forced reply prefix) are each scored on the validation
  queries' instruction prompts; the best top-1 wins (ties: the lower mean rank, then the
  candidates' order). Every candidate's score is recorded, and with a chat template the plain
  template's too, so a run reports which template the model answers better, on validation.
- ``filter_instructions`` (Pham et al. 2026): an instruction is kept when its prompts answer at
  least ``min_correct`` of the pool's queries correctly; a task needs ``n_instructions`` kept
  instructions. The prompts it evaluates are the clean prompts whose mean head activations
  make the vectors, and per kept instruction ``samples_per_instruction`` correctly answered
  ones become head-scoring samples (the CIE samples of AIE, AttnLRP's samples).

The filter's decision is exact; only the order of evaluation is adaptive to save forward passes:
every instruction is first tried on one chunk (24 queries), then instructions are resolved one at a time,
the least accurate first, each stopping as soon as it has ``min_correct`` correct answers or
can no longer reach them, and the task stops as soon as it can no longer keep enough.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from fvlens.modeltype import Model

from fvlens.activations import last_token_head_activations
from fvlens.batch import DEFAULT_TEMPLATE, PromptBatch, Template
from fvlens.chat import answer_formats
from fvlens.evaluation import Evaluation, answer_evaluation, evaluate
from fvlens.forward import final_logits, map_chunks, token_budget
from fvlens.hooks import hook_name
from fvlens.prefix import MIN_SHARED, forward_shared, sharable
from fvlens.prompts import instruction_prompts
from fvlens.tasks import Instruction, Pair, Task

__all__ = ["FormatChoice", "choose_answer_format", "InstructionFilter", "filter_instructions",
           "activations_and_correct", "FILTER_CHUNK"]

FILTER_CHUNK = 24  # prompts per instruction in the filter's first round


@dataclasses.dataclass(frozen=True, kw_only=True)
class FormatChoice:
    """The answer format chosen on validation.

    Attributes:
        template: the chosen template (its ``name`` is the format's).
        scores: validation top-1 of every candidate, by name (``"none"``: the plain template;
            ``"chat/…"``: in the chat template); the chosen one is among them.
        n: validation prompts per candidate.
    """

    template: Template
    scores: dict[str, float]
    n: int

    @property
    def name(self) -> str:
        return _label(self.template)

    def to_json(self) -> dict:
        return {"chosen": self.name, "validation_top1": dict(self.scores), "n": self.n,
                "template": self.template.to_json()}


def _label(template: Template) -> str:
    return f"chat/{template.name}" if template.chat else template.name


def choose_answer_format(model: Model, task: Task, queries: Sequence[Pair],
                         template: Template, *, targets: str = "first", fixed: str = "auto",
                         compare_plain: bool = True, seed: int = 0) -> FormatChoice:
    """The answer format with the best validation top-1 of the task's instruction prompts.

    Args:
        task: its instructions cycle over ``queries`` row by row.
        queries: the validation queries.
        template: the run's template (plain, or in a chat template).
        targets: "first" or "full" scoring of the validation prompts.
        fixed: "auto" chooses; a candidate's name takes that one (still scoring all).
        compare_plain: with a chat template, also score the plain template (recorded under
            "none", never chosen).
    """
    candidates = answer_formats(template)
    if fixed != "auto" and fixed not in candidates:
        raise ValueError(f"answer format {fixed!r} is not one of this template's "
                         f"{['auto', *candidates]}")
    evs: dict[str, Evaluation] = {}
    for name, tpl in candidates.items():
        batch = instruction_prompts(model, task, queries, seed=seed, template=tpl)
        evs[name] = evaluate(model, batch, targets=targets)
    order = list(candidates)
    if fixed == "auto":
        best = min(order, key=lambda n: (-evs[n].top1, float(evs[n].ranks.float().mean()),
                                         order.index(n)))
    else:
        best = fixed
    scores = {_label(candidates[n]): evs[n].top1 for n in order}
    if template.chat and compare_plain:
        plain = dataclasses.replace(template, chat_prefix="", chat_suffix="", forced_prefix="",
                                    answer_prefix=DEFAULT_TEMPLATE.answer_prefix, name="none")
        batch = instruction_prompts(model, task, queries, seed=seed, template=plain)
        scores["none"] = evaluate(model, batch, targets=targets).top1
    return FormatChoice(template=candidates[best], scores=scores, n=len(queries))


def activations_and_correct(model: Model, batch: PromptBatch, *,
                            targets: str = "first"
                            ) -> tuple[Float[Tensor, "batch n_layers n_heads d_head"],
                                       Bool[Tensor, " batch"]]:
    """Last-token head activations and correctness (whole answers with ``targets="full"``:
    rows whose first token is right are re-scored teacher-forced). Chat prompts run their
    shared prefix once (``fvlens.prefix``)."""
    z, correct = _shared_activations(model, batch)
    if z is None:
        z, correct = last_token_head_activations(model, batch)
    if targets == "full" and bool(correct.any()):
        rows = correct.nonzero()[:, 0]
        full = answer_evaluation(model, batch.select(rows))
        correct = correct.clone()
        correct[rows] = full.ranks == 0
    return z, correct


@torch.no_grad()
def _shared_activations(model: Model, batch: PromptBatch):
    """``last_token_head_activations`` through ``forward_shared`` (None when the rows share
    fewer than ``MIN_SHARED`` tokens)."""
    n_layers = model.cfg.n_layers

    def run(chunk: PromptBatch):
        shared = sharable(model, chunk)
        if shared < MIN_SHARED:
            return None
        store: list = [None] * n_layers

        def grab(z: Tensor, hook) -> None:
            store[hook.layer()] = z[:, -1].detach().float().cpu()

        resid = forward_shared(model, chunk, shared, fwd_hooks=[
            (hook_name("z", layer), grab) for layer in range(n_layers)])
        logits = final_logits(model, resid[:, -1])
        return torch.stack(store, dim=1), logits.argmax(-1).cpu() == chunk.targets

    parts = map_chunks(batch, run, tokens_per_pass=token_budget(model))
    if any(p is None for p in parts):
        return None, None
    return torch.cat([z for z, _ in parts]), torch.cat([c for _, c in parts])


@dataclasses.dataclass(frozen=True, kw_only=True)
class InstructionFilter:
    """What the filter evaluated and kept.

    Attributes:
        kept: the kept instructions (the first ``n_instructions`` that pass, in task order).
        counts: per instruction text ``{"correct": c, "evaluated": e, "kept": bool}``.
        clean: every prompt evaluated for a kept instruction; ``z``/``correct`` their last-token
            head activations and correctness.
        passed: whether the task passes (enough instructions kept).
        reason: why it failed (empty when it passed).
    """

    kept: tuple[Instruction, ...]
    counts: dict[str, dict]
    clean: PromptBatch | None
    z: Tensor | None
    correct: Tensor | None
    passed: bool
    reason: str = ""

    def samples(self, per_instruction: int, *, seed: int = 0) -> PromptBatch:
        """``per_instruction`` correctly answered prompts of each kept instruction (seeded)."""
        if self.clean is None or self.correct is None:
            raise ValueError("the task did not pass the instruction filter: no samples")
        rng = random.Random(seed)
        rows: list[int] = []
        for ins in self.kept:
            good = [i for i, t in enumerate(self.clean.instructions)
                    if t == ins.text and bool(self.correct[i])]
            rows += sorted(rng.sample(good, min(per_instruction, len(good))))
        return self.clean.select(rows)

    def to_json(self) -> dict:
        return {"passed": self.passed, "reason": self.reason,
                "kept": [i.text for i in self.kept], "counts": self.counts}


def filter_instructions(model: Model, task: Task, pool: Sequence[Pair],
                        template: Template, *, min_correct: int, n_instructions: int,
                        targets: str = "first", seed: int = 0,
                        chunk: int = FILTER_CHUNK) -> InstructionFilter:
    """Pham et al.'s filter over the task's instructions on the ``pool`` queries.

    Args:
        pool: queries each instruction is asked (the same for every instruction, in order).
        template: the prompts' template (answer format included).
        min_correct: correct answers an instruction needs to be kept.
        n_instructions: kept instructions the task needs (0: every instruction must pass).
        targets: what counts as correct ("first" token or the "full" answer).
        chunk: prompts per instruction in the first round.
    """
    instructions = list(task.instructions)
    need = n_instructions or len(instructions)
    if min_correct < 1:
        raise ValueError(f"min_correct must be ≥ 1, got {min_correct}")
    if len(instructions) < need:
        return InstructionFilter(kept=(), counts={}, clean=None, z=None, correct=None,
                                 passed=False, reason=f"the task has {len(instructions)} "
                                 f"instructions; the filter needs {need}")
    pool = list(pool)
    done = [0] * len(instructions)
    batches: list[list[tuple[PromptBatch, Tensor, Tensor]]] = [[] for _ in instructions]

    def n_correct(i: int) -> int:
        return sum(int(c.sum()) for _, _, c in batches[i])

    def step(i: int, size: int) -> None:
        qs = pool[done[i]:done[i] + size]
        batch = instruction_prompts(model, task, qs, instruction=i, seed=seed, template=template)
        z, correct = activations_and_correct(model, batch, targets=targets)
        batches[i].append((batch, z, correct))
        done[i] += len(qs)

    def status(i: int) -> str:
        c = n_correct(i)
        if c >= min_correct:
            return "kept"
        return "failed" if c + len(pool) - done[i] < min_correct else "open"

    def hopeless() -> bool:
        return sum(status(i) != "failed" for i in range(len(instructions))) < need

    for i in range(len(instructions)):
        step(i, chunk)
        if hopeless():
            break
    while not hopeless() and sum(status(i) == "kept" for i in range(len(instructions))) < need:
        open_ = [i for i in range(len(instructions)) if status(i) == "open"]
        if not open_:
            break
        i = min(open_, key=lambda j: (n_correct(j) / max(done[j], 1), j))
        missing = min_correct - n_correct(i)
        rate = max(n_correct(i) / max(done[i], 1), 0.1)
        # Enough to succeed at the rate seen so far, but no more than it takes to fail for
        # certain if every answer were wrong.
        step(i, int(min(64, max(8, missing / rate), len(pool) - done[i] - missing + 1)))
    counts = {ins.text: {"correct": n_correct(i), "evaluated": done[i],
                         "kept": status(i) == "kept"} for i, ins in enumerate(instructions)}
    kept_idx = [i for i in range(len(instructions)) if status(i) == "kept"][:need]
    if len(kept_idx) < need:
        worst = min(range(len(instructions)), key=lambda j: n_correct(j))
        return InstructionFilter(
            kept=(), counts=counts, clean=None, z=None, correct=None, passed=False,
            reason=f"{len(kept_idx)} of {len(instructions)} instructions reach "
                   f"{min_correct} correct answers on {len(pool)} queries (needed: {need}; "
                   f"e.g. {instructions[worst].text!r}: {n_correct(worst)} of {done[worst]})")
    parts = [b for i in kept_idx for b in batches[i]]
    clean = PromptBatch.concat([b for b, _, _ in parts])
    return InstructionFilter(kept=tuple(instructions[i] for i in kept_idx), counts=counts,
                             clean=clean, z=torch.cat([z for _, z, _ in parts]),
                             correct=torch.cat([c for _, _, c in parts]), passed=True)
