"""Automatic intensional frames: which instruction tokens define the task?

An instruction's *frame* is the part that states the task ("opposite" in "Give the opposite of
the word"). Given an instruction and queries the model answers under it, ``search_frame``:

1. ranks the instruction's tokens by AttnLRP input relevance of the target logit, summed over
   the samples (``explain_batch(...).tokens``);
2. greedily removes (or replaces by a neutral token) the candidate token whose removal lowers
   accuracy the most, given those already removed, for up to ``max_size`` steps; candidates
   are the ``n_candidates`` most relevant tokens;
3. returns the shortest prefix of that path that reaches its lowest accuracy — the
   automatic frame (the smallest set on the path whose removal drops accuracy the most).

``compare_frames`` sets it beside the task file's annotated frame: token overlap, accuracy
after removing each, and the zero-shot accuracy of FVs from heads AttnLRP selects with either
frame (``score_heads(method="attnlrp")`` on instruction prompts reads ``frame_positions``).
The embedded model follows few instructions; where no sample qualifies the search fails with a
message, and ``criterion="top5"`` counts a sample whose target is in the top 5.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from transformer_lens import HookedTransformer

from fvlens.evaluation import Evaluation, evaluate
from fvlens.prompts import PromptBatch, instruction_prompts, tokenize, zero_shot_prompts
from fvlens.tasks import Pair, Task, load_task

__all__ = ["FrameSearch", "FrameConfig", "instruction_samples", "instruction_token_positions",
           "token_relevance", "edit_instruction", "search_frame", "with_frame",
           "compare_frames", "following_survey", "frame_figure"]

CRITERIA = ("top1", "top3", "top5")
MODES = ("remove", "replace")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FrameConfig:
    """Settings of the frame search.

    Attributes:
        criterion: a sample counts as answered when its target is top-1 ("top1") or within
            the top 3 / 5 ("top3", "top5"); accuracy in the search uses the same criterion.
        mode: "remove" deletes the tokens, "replace" puts ``neutral`` in their place.
        neutral: the replacement text (its first token).
        max_size: greedy steps (largest frame).
        n_candidates: most relevant tokens tried at each step.
        n_queries: train queries tried as samples (those answered under the criterion kept).
        k: heads per FV in the head comparison.
        n_val: zero-shot validation queries (FV layer); n_test: zero-shot test queries.
        seed: seeds the query sample.
    """

    criterion: str = "top1"
    mode: str = "remove"
    neutral: str = " the"
    max_size: int = 4
    n_candidates: int = 6
    n_queries: int = 40
    k: int = 10
    n_val: int = 15
    n_test: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("max_size", "n_candidates", "n_queries", "k", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1")

    @property
    def top(self) -> int:
        return int(self.criterion.removeprefix("top"))


def _accuracy(ev: Evaluation, top: int) -> tuple[float, float]:
    return ev.top(top), float(ev.target_probs.mean())


def instruction_samples(model: HookedTransformer, task: Task, instruction: int,
                        queries: Sequence[Pair], *, criterion: str = "top1") -> PromptBatch:
    """Instruction prompts of ``queries`` the model answers under ``criterion``.

    Raises:
        ValueError: when none qualifies, naming the accuracy and the remedies.
    """
    top = int(criterion.removeprefix("top"))
    batch = instruction_prompts(model, task, queries, instruction=instruction)
    ev = evaluate(model, batch)
    keep = (ev.ranks < top).nonzero()[:, 0]
    if len(keep) == 0:
        raise ValueError(
            f"no correctly answered samples: under instruction {instruction} of {task.name!r} "
            f"({task.instructions[instruction].text!r}) the model has the target in its top "
            f"{top} for none of {len(batch)} queries (top-1 {ev.top1:.2f}, top-5 {ev.top(5):.2f});"
            f" use criterion='top5' (--criterion top5), another instruction, or a task the "
            f"model follows (fvlens frames --survey lists them)")
    return batch.select(keep)


def instruction_token_positions(model: HookedTransformer, batch: PromptBatch, text: str
                                ) -> list[list[int]]:
    """Per row, the positions (padded coordinates) of the tokens of the instruction ``text``.

    The instruction opens every row; a token belongs to it when its characters overlap
    ``text``. Every row yields the same number of tokens.
    """
    out = []
    for i, prompt in enumerate(batch.texts):
        if not prompt.startswith(text):
            raise ValueError(f"row {i} does not start with the instruction {text!r}")
        _, offsets = tokenize(model, prompt)
        pad = int(batch.n_pad[i])
        out.append([pad + j for j, (a, b) in enumerate(offsets) if b > a and a < len(text)])
    if len({len(r) for r in out}) > 1:
        raise ValueError("the instruction tokenizes differently across rows; use one "
                         "instruction per batch")
    return out


def token_relevance(model: HookedTransformer, batch: PromptBatch,
                    positions: Sequence[Sequence[int]], *, batch_size: int = 4
                    ) -> torch.Tensor:
    """AttnLRP input relevance of each instruction token, summed over the rows.

    Returns:
        ``[n_instruction_tokens]`` float tensor.
    """
    from fvlens.attnlrp import explain_batch

    total = torch.zeros(len(positions[0]), dtype=torch.float64)
    for start in range(0, len(batch), batch_size):
        rows = list(range(start, min(start + batch_size, len(batch))))
        chunk = batch.select(rows)
        rel = explain_batch(model, chunk.tokens, chunk.targets,
                            attention_mask=chunk.attention_mask)
        for r, i in enumerate(rows):
            shift = int(chunk.n_pad[r]) - int(batch.n_pad[i])
            idx = torch.tensor([p + shift for p in positions[i]])
            total += rel.tokens[r, idx].double().cpu()
    return total


def edit_instruction(batch: PromptBatch, positions: Sequence[Sequence[int]],
                     drop: Sequence[int], *, replace_with: int | None = None) -> PromptBatch:
    """The batch with instruction tokens ``drop`` (indices into each row's ``positions``)
    removed, or replaced by the token ``replace_with``; re-padded on the left."""
    drop = set(drop)
    rows, frames, contexts = [], [], []
    for i in range(len(batch)):
        pad = int(batch.n_pad[i])
        gone = {positions[i][d] for d in drop}
        ids, frame, context = [], [], []
        old_frame, old_ctx = set(batch.frame_positions[i]), set(batch.context_positions[i])
        for p in range(pad, batch.tokens.shape[1]):
            if p in gone and replace_with is None:
                continue
            tok = replace_with if p in gone else int(batch.tokens[i, p])
            if p in old_frame and p not in gone:
                frame.append(len(ids))
            if p in old_ctx:
                context.append(len(ids))
            ids.append(tok)
        rows.append(ids)
        frames.append(frame)
        contexts.append(context)
    return PromptBatch.from_rows(rows, batch.targets.tolist(), kind=batch.kind,
                                 pad_id=batch.pad_id, texts=batch.texts, queries=batch.queries,
                                 frames=frames, contexts=contexts,
                                 demonstrations=batch.demonstrations,
                                 instructions=batch.instructions, template=batch.template)


def with_frame(batch: PromptBatch, positions: Sequence[Sequence[int]], frame: Sequence[int]
               ) -> PromptBatch:
    """The batch with ``frame_positions`` set to instruction tokens ``frame`` (indices)."""
    return dataclasses.replace(batch, frame_positions=tuple(
        tuple(sorted(positions[i][f] for f in frame)) for i in range(len(batch))))


@dataclasses.dataclass(frozen=True, kw_only=True)
class FrameSearch:
    """Result of ``search_frame`` for one instruction.

    Attributes:
        instruction: the instruction text.
        tokens: its tokens.
        relevance: summed AttnLRP relevance per token.
        frame: the automatic frame (token indices, in the order removed).
        path: the greedy steps: ``{"removed": [...], "accuracy", "target_prob"}``, step 0 the
            intact instruction.
        annotated: token indices of the task file's frame.
        n_samples: samples the search ran on.
    """

    instruction: str
    tokens: tuple[str, ...]
    relevance: tuple[float, ...]
    frame: tuple[int, ...]
    path: tuple[dict, ...]
    annotated: tuple[int, ...]
    n_samples: int

    @property
    def frame_tokens(self) -> list[str]:
        return [self.tokens[i] for i in sorted(self.frame)]

    def overlap(self) -> dict[str, Any]:
        """Token overlap of the automatic and the annotated frame."""
        a, b = set(self.frame), set(self.annotated)
        union = a | b
        return {"shared": sorted(a & b), "jaccard": len(a & b) / len(union) if union else 1.0,
                "precision": len(a & b) / len(a) if a else 0.0,
                "recall": len(a & b) / len(b) if b else 0.0}

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"frame_tokens": self.frame_tokens,
                                           "annotated_tokens": [self.tokens[i] for i in
                                                                self.annotated],
                                           "overlap": self.overlap()}


def search_frame(model: HookedTransformer, samples: PromptBatch, instruction_text: str,
                 cfg: FrameConfig = FrameConfig()) -> FrameSearch:
    """Greedy search for the smallest token set whose removal drops accuracy the most.

    Args:
        samples: instruction prompts the model answers (``instruction_samples``); all rows use
            the instruction ``instruction_text``.
        cfg: criterion, removal mode, steps and candidates.
    """
    positions = instruction_token_positions(model, samples, instruction_text)
    relevance = token_relevance(model, samples, positions)
    row0 = samples.tokens[0, positions[0]].tolist()
    tokens = tuple(model.tokenizer.decode([t]) for t in row0)
    annotated = [j for j, p in enumerate(positions[0]) if p in set(samples.frame_positions[0])]
    replace = None
    if cfg.mode == "replace":
        replace = model.tokenizer(cfg.neutral, add_special_tokens=False)["input_ids"][0]
    order = sorted(range(len(tokens)), key=lambda j: -float(relevance[j]))
    candidates = order[:cfg.n_candidates]

    def score(drop: list[int]) -> tuple[float, float]:
        edited = edit_instruction(samples, positions, drop, replace_with=replace)
        return _accuracy(evaluate(model, edited), cfg.top)

    acc, prob = score([])
    path = [{"removed": [], "accuracy": acc, "target_prob": prob}]
    removed: list[int] = []
    for _ in range(min(cfg.max_size, len(candidates))):
        trials = {j: score(removed + [j]) for j in candidates if j not in removed}
        if not trials:
            break
        j = min(trials, key=lambda c: (trials[c], order.index(c)))
        removed.append(j)
        path.append({"removed": list(removed), "accuracy": trials[j][0],
                     "target_prob": trials[j][1]})
    best = min(range(len(path)), key=lambda s: (path[s]["accuracy"], s))
    return FrameSearch(instruction=instruction_text, tokens=tokens,
                       relevance=tuple(float(r) for r in relevance),
                       frame=tuple(path[best]["removed"]), path=tuple(path),
                       annotated=tuple(annotated), n_samples=len(samples))


def _fv_accuracy(model: HookedTransformer, samples: PromptBatch, frame_batch: PromptBatch,
                 task: Task, val: PromptBatch, test: PromptBatch, k: int) -> dict[str, Any]:
    """AttnLRP heads read at the batch's frame → FV (mean over the samples) → zero-shot."""
    from fvlens.activations import mean_head_activations
    from fvlens.heads.select import score_heads
    from fvlens.injection import best_layer, layer_sweep
    from fvlens.steering import FunctionVector

    scores = score_heads(model, frame_batch, method="attnlrp", task=task.name, progress=False)
    heads = scores.top_k(k)
    mean_z = mean_head_activations(model, samples, only_correct=False)
    fv = FunctionVector.from_heads(model, mean_z, heads)
    sweep = layer_sweep(model, val, fv.vector)
    layer = best_layer(sweep)
    ev = evaluate(model, test, fwd_hooks=fv.hooks(layer))
    return {"heads": [list(h) for h in heads], "layer": layer, "val_top1": sweep[layer].top1,
            "test_top1": ev.top1, "test_top3": ev.top3, "scores": scores}


def compare_frames(model: HookedTransformer, task: str | Task, instruction: int = 0,
                   cfg: FrameConfig = FrameConfig(), *, heads: bool = True) -> dict[str, Any]:
    """Search the automatic frame of one instruction and compare it with the annotated one.

    Returns:
        JSON-ready dict: the search, its overlap with the annotated frame, accuracy after
        removing the annotated frame, and (``heads=True``) zero-shot FV accuracy from AttnLRP
        heads selected with each frame, plus the overlap of the two head sets.
    """
    task = task if isinstance(task, Task) else load_task(task)
    if not 0 <= instruction < len(task.instructions):
        raise ValueError(f"task {task.name!r} has instructions 0..{len(task.instructions) - 1}"
                         f", got {instruction}")
    ins = task.instructions[instruction]
    train, test_split = task.split(seed=cfg.seed)
    pairs = list(train.sample(len(train), seed=cfg.seed).pairs)
    queries, val_q = pairs[:cfg.n_queries], pairs[cfg.n_queries:cfg.n_queries + cfg.n_val]
    samples = instruction_samples(model, task, instruction, queries, criterion=cfg.criterion)
    search = search_frame(model, samples, ins.text, cfg)
    positions = instruction_token_positions(model, samples, ins.text)
    replace = (model.tokenizer(cfg.neutral, add_special_tokens=False)["input_ids"][0]
               if cfg.mode == "replace" else None)
    out: dict[str, Any] = {"task": task.name, "instruction_index": instruction,
                           "n_queries": len(queries), "n_samples": len(samples),
                           "search": search.to_json()}
    if search.annotated:
        edited = edit_instruction(samples, positions, search.annotated, replace_with=replace)
        out["annotated_removed_accuracy"] = evaluate(model, edited).top(cfg.top)
    if heads:
        val = zero_shot_prompts(model, val_q or queries)
        test_q = list(test_split.sample(min(cfg.n_test, len(test_split)), seed=cfg.seed).pairs)
        test = zero_shot_prompts(model, test_q)
        out["zero_shot_test_top1"] = evaluate(model, test).top1
        found = {}
        frames = {"automatic": search.frame, "annotated": search.annotated}
        for name, frame in frames.items():
            if not frame:
                out[f"heads_{name}"] = {"skipped": f"the {name} frame is empty"}
                continue
            res = _fv_accuracy(model, samples, with_frame(samples, positions, frame), task, val,
                               test, cfg.k)
            found[name] = res.pop("scores")
            out[f"heads_{name}"] = res
        if len(found) == 2:
            out["head_overlap"] = found["automatic"].overlap(found["annotated"], cfg.k)
    return out


def following_survey(model: HookedTransformer, tasks: Sequence[str | Task], *, n: int = 24,
                     seed: int = 0) -> dict[str, list[dict[str, float]]]:
    """Instruction top-1 / top-5 per task and instruction (which instructions the model
    follows), on ``n`` train queries each."""
    out = {}
    for t in tasks:
        task = t if isinstance(t, Task) else load_task(t)
        train, _ = task.split(seed=seed)
        qs = list(train.sample(min(n, len(train)), seed=seed).pairs)
        rows = []
        for i, ins in enumerate(task.instructions):
            ev = evaluate(model, instruction_prompts(model, task, qs, instruction=i))
            rows.append({"instruction": ins.text, "top1": ev.top1, "top5": ev.top(5)})
        out[task.name] = rows
    return out


def frame_figure(search: FrameSearch | dict[str, Any]) -> go.Figure:
    """Left: summed relevance per instruction token (automatic frame red, annotated frame
    outlined). Right: accuracy along the greedy removal path."""
    s = search.to_json() if isinstance(search, FrameSearch) else search
    tokens = [t.replace(" ", "␣") for t in s["tokens"]]
    auto, ann = set(s["frame"]), set(s["annotated"])
    colors = ["#d62728" if i in auto else "#7f7f7f" for i in range(len(tokens))]
    widths = [3 if i in ann else 0 for i in range(len(tokens))]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35],
                        subplot_titles=("AttnLRP relevance (red: automatic frame, outlined: "
                                        "annotated)", "accuracy while removing"))
    fig.add_trace(go.Bar(x=list(range(len(tokens))), y=list(s["relevance"]),
                         marker=dict(color=colors, line=dict(width=widths, color="black")),
                         customdata=tokens, hovertemplate="%{customdata}: %{y:.4g}<extra></extra>",
                         showlegend=False), row=1, col=1)
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(tokens))), ticktext=tokens,
                     tickangle=-45, row=1, col=1)
    steps = [" + ".join(tokens[j] for j in p["removed"]) or "(intact)" for p in s["path"]]
    fig.add_trace(go.Scatter(x=list(range(len(steps))), y=[p["accuracy"] for p in s["path"]],
                             mode="lines+markers", customdata=steps, showlegend=False,
                             hovertemplate="%{customdata}<br>accuracy %{y:.2f}<extra></extra>"),
                  row=1, col=2)
    fig.update_xaxes(title_text="tokens removed", row=1, col=2)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(title=f"automatic frame of {s['instruction']!r}: "
                      f"{[tokens[i] for i in sorted(auto)]}")
    return fig
