"""Prompt builders: ICL, instruction and zero-shot prompts, and their corrupted variants.

Every builder returns a ``PromptBatch``: left-padded tokens with an attention mask (so the last
real token of every row is at position -1, and a hook that edits "the last position" edits the
same token in every row), the first-token target ids, and the token positions of the parts
that head scoring reads (an instruction's frame, the demonstrations' answers).

Default template (Todd et al. 2024): ``Q: {x}\\nA: {y}\\n\\n`` per demonstration, then
``Q: {x_query}\\nA:``; the target is the first token of ``" " + y``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from fvlens.tasks import Instruction, Pair, Task

__all__ = [
    "Template",
    "PromptBatch",
    "icl_prompts",
    "instruction_prompts",
    "zero_shot_prompts",
    "target_ids",
    "tokenize",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Template:
    """How a pair is written. ``answer_prefix`` goes before every answer, demonstrated or not."""

    query: str = "Q: {x}\nA:"
    answer_prefix: str = " "
    demo_suffix: str = "\n\n"
    instruction_suffix: str = "\n"

    def __post_init__(self) -> None:
        if "{x}" not in self.query:
            raise ValueError(f"Template.query must contain '{{x}}', got {self.query!r}")


DEFAULT_TEMPLATE = Template()


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromptBatch:
    """A left-padded batch of prompts with targets and the positions head scoring reads.

    Attributes:
        tokens: token ids, left-padded with the pad token.
        attention_mask: 1 for real tokens, 0 for padding.
        targets: first token id of each row's expected answer.
        texts: the prompt strings (without BOS).
        queries: the query pair of each row.
        frame_positions: per row, the positions (in padded coordinates) of the tokens that
            define the task: the instruction's frame substrings, or in ICL prompts the
            demonstrations' answer tokens.
        context_positions: per row, the positions of every instruction or demonstration token.
        kind: "icl", "icl_shuffled", "instruction", "instruction_corrupted" or "zero_shot".
    """

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    targets: Int[Tensor, " batch"]
    texts: tuple[str, ...]
    queries: tuple[Pair, ...]
    frame_positions: tuple[tuple[int, ...], ...]
    context_positions: tuple[tuple[int, ...], ...]
    kind: str
    pad_id: int = 0

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        for name in ("texts", "queries", "frame_positions", "context_positions"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PromptBatch.{name} has {len(getattr(self, name))} rows, "
                                 f"tokens has {n}")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, rows: Sequence[int] | Tensor) -> PromptBatch:
        """The sub-batch of the given rows, re-padded to its longest row."""
        idx = [int(i) for i in (rows.tolist() if isinstance(rows, Tensor) else rows)]
        return _pack(
            [self._row_tokens(i) for i in idx], [int(self.targets[i]) for i in idx],
            [self.texts[i] for i in idx], [self.queries[i] for i in idx],
            [self._row_positions(self.frame_positions, i) for i in idx],
            [self._row_positions(self.context_positions, i) for i in idx],
            self.kind, pad_id=self.pad_id,
        )

    def chunks(self, size: int) -> list[PromptBatch]:
        """Consecutive sub-batches of at most ``size`` rows."""
        return [self.select(range(i, min(i + size, len(self)))) for i in range(0, len(self), size)]

    @property
    def n_pad(self) -> Int[Tensor, " batch"]:
        return (self.attention_mask == 0).sum(-1)

    def _row_tokens(self, i: int) -> list[int]:
        return self.tokens[i, int(self.n_pad[i]):].tolist()

    def _row_positions(self, table, i: int) -> tuple[int, ...]:
        pad = int(self.n_pad[i])
        return tuple(p - pad for p in table[i])


def tokenize(model: HookedTransformer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text``, with BOS when the model expects one."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer; build prompts from token ids yourself")
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if model.cfg.default_prepend_bos and tok.bos_token_id is not None:
        ids, offsets = [tok.bos_token_id] + ids, [(0, 0)] + offsets
    return ids, offsets


def target_ids(model: HookedTransformer, outputs: Sequence[str], *,
               template: Template = DEFAULT_TEMPLATE) -> tuple[list[int], int]:
    """First token id of each ``answer_prefix + output``, and how many are multi-token."""
    ids, multi = [], 0
    for out in outputs:
        toks = model.tokenizer(template.answer_prefix + out, add_special_tokens=False)["input_ids"]
        if not toks:
            raise ValueError(f"output {out!r} tokenizes to nothing")
        ids.append(toks[0])
        multi += len(toks) > 1
    return ids, multi


def zero_shot_prompts(model: HookedTransformer, queries: Task | Sequence[Pair], *,
                      template: Template = DEFAULT_TEMPLATE) -> PromptBatch:
    """``Q: {x}\\nA:`` for every query pair."""
    rows = [[(template.query.format(x=q.input), None)] for q in _pairs(queries)]
    return _build(model, rows, _pairs(queries), "zero_shot", template)


def icl_prompts(model: HookedTransformer, queries: Task | Sequence[Pair],
                demonstrations: Task | Sequence[Pair], *, shots: int = 10, seed: int = 0,
                shuffle_labels: bool = False,
                template: Template = DEFAULT_TEMPLATE) -> PromptBatch:
    """In-context prompts: ``shots`` demonstrations drawn from ``demonstrations`` per query.

    Args:
        queries: the pairs to ask about (one prompt each).
        demonstrations: the pool demonstrations are drawn from (a query is never its own demo).
        shots: demonstrations per prompt.
        seed: seeds the draw (and the label shuffle).
        shuffle_labels: the corrupted prompts of causal mediation: the demonstrations' outputs
            are permuted among themselves so the inputs no longer map to their outputs.
    """
    pool, qs = _pairs(demonstrations), _pairs(queries)
    if len(pool) < shots + 1:
        raise ValueError(f"need at least {shots + 1} demonstration pairs for {shots}-shot "
                         f"prompts, got {len(pool)}")
    rng = random.Random(seed)
    rows = []
    for q in qs:
        demos = rng.sample([p for p in pool if p != q], shots)
        outputs = [d.output for d in demos]
        if shuffle_labels:
            outputs = _derangement(outputs, rng)
        parts: list[tuple[str, str | None]] = []
        for d, y in zip(demos, outputs):
            parts.append((template.query.format(x=d.input), "context"))
            parts.append((template.answer_prefix + y, "frame"))
            parts.append((template.demo_suffix, "context"))
        parts.append((template.query.format(x=q.input), None))
        rows.append(parts)
    return _build(model, rows, qs, "icl_shuffled" if shuffle_labels else "icl", template)


def instruction_prompts(model: HookedTransformer, task: Task,
                        queries: Task | Sequence[Pair] | None = None, *,
                        instruction: int | Instruction | None = None, corrupt: bool = False,
                        seed: int = 0, template: Template = DEFAULT_TEMPLATE) -> PromptBatch:
    """``{instruction}\\nQ: {x}\\nA:`` prompts.

    Args:
        task: supplies the instructions (and the queries when ``queries`` is None).
        instruction: one instruction (index or object) for every row; None cycles through
            the task's instructions row by row.
        corrupt: replace the instruction by a task-unrelated sequence of the same token length
            (the baseline of Davidson et al.'s causal mediation): words drawn uniformly, seeded,
            from the vocabulary's lower-case ASCII words of 3+ letters that are one token both
            at the start and after a space, so the replacement has exactly the instruction's
            token count.
    """
    if not task.instructions:
        raise ValueError(f"task {task.name!r} has no instructions; add some to its JSON file "
                         "or use icl_prompts")
    qs = _pairs(queries if queries is not None else task)
    if isinstance(instruction, int):
        chosen = [task.instructions[instruction]] * len(qs)
    elif isinstance(instruction, Instruction):
        chosen = [instruction] * len(qs)
    else:
        chosen = [task.instructions[i % len(task.instructions)] for i in range(len(qs))]
    rng = random.Random(seed)
    rows = []
    for ins, q in zip(chosen, qs):
        text = ins.text
        if corrupt:
            text = _neutral_text(model, len(tokenize(model, ins.text)[0]) -
                                 int(model.cfg.default_prepend_bos), rng)
            parts = [(text, "context")]
        else:
            parts = _split_frames(text, ins.frame)
        parts.append((template.instruction_suffix, "context"))
        parts.append((template.query.format(x=q.input), None))
        rows.append(parts)
    return _build(model, rows, qs, "instruction_corrupted" if corrupt else "instruction",
                  template)


# --- internals ---------------------------------------------------------------------------


def _pairs(x: Task | Sequence[Pair]) -> list[Pair]:
    return list(x.pairs) if isinstance(x, Task) else list(x)


def _derangement(items: list[str], rng: random.Random) -> list[str]:
    """A permutation that moves every position (when the labels are not all equal)."""
    if len(set(items)) < 2:
        return list(items)
    for _ in range(100):
        perm = items[:]
        rng.shuffle(perm)
        if all(a != b for a, b in zip(perm, items)):
            return perm
    return perm


def _split_frames(text: str, frame: Sequence[str]) -> list[tuple[str, str | None]]:
    """Split an instruction into ("frame" | "context") pieces at its frame substrings."""
    marks = [0] * len(text)
    for f in frame:
        start = text.find(f)
        if start < 0:
            raise ValueError(f"frame {f!r} does not occur in instruction {text!r}")
        for i in range(start, start + len(f)):
            marks[i] = 1
    parts, i = [], 0
    while i < len(text):
        j = i
        while j < len(text) and marks[j] == marks[i]:
            j += 1
        parts.append((text[i:j], "frame" if marks[i] else "context"))
        i = j
    return parts


_NEUTRAL_CACHE: dict[int, list[str]] = {}


def _neutral_words(model: HookedTransformer) -> list[str]:
    """Lower-case words that are one token both alone and after a space (cached per tokenizer)."""
    tok = model.tokenizer
    if id(tok) not in _NEUTRAL_CACHE:
        words = []
        for i in range(tok.vocab_size):
            s = tok.decode([i])
            if (len(s) >= 4 and s[0] == " " and s[1:].isascii() and s[1:].isalpha()
                    and s[1:].islower()
                    and len(tok(s[1:], add_special_tokens=False)["input_ids"]) == 1):
                words.append(s[1:])
        if not words:
            raise ValueError("the tokenizer has no single-token words to build a neutral "
                             "instruction from")
        _NEUTRAL_CACHE[id(tok)] = words
    return _NEUTRAL_CACHE[id(tok)]


def _neutral_text(model: HookedTransformer, n_tokens: int, rng: random.Random) -> str:
    """``n_tokens`` random whole words, each one token, joined by spaces."""
    words = _neutral_words(model)
    return " ".join(rng.choice(words) for _ in range(max(n_tokens, 1)))


def _build(model: HookedTransformer, rows: list[list[tuple[str, str | None]]],
           queries: list[Pair], kind: str, template: Template) -> PromptBatch:
    if not rows:
        raise ValueError("no queries to build prompts from")
    targets, _ = target_ids(model, [q.output for q in queries], template=template)
    all_ids, texts, frames, contexts = [], [], [], []
    for parts in rows:
        text = "".join(p for p, _ in parts)
        ids, offsets = tokenize(model, text)
        spans = {"frame": [], "context": []}
        pos = 0
        for piece, role in parts:
            if role is not None:
                spans[role].append((pos, pos + len(piece)))
            pos += len(piece)
        frame = _positions(offsets, spans["frame"])
        context = _positions(offsets, spans["frame"] + spans["context"])
        all_ids.append(ids)
        texts.append(text)
        frames.append(frame)
        contexts.append(context)
    pad = model.tokenizer.pad_token_id
    pad = pad if pad is not None else (model.tokenizer.eos_token_id or 0)
    return _pack(all_ids, targets, texts, queries, frames, contexts, kind, pad_id=pad)


def _positions(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> tuple[int, ...]:
    """Token positions whose characters overlap any span (ignoring pure-whitespace edges)."""
    out = []
    for i, (a, b) in enumerate(offsets):
        if b > a and any(a < e and s < b for s, e in spans):
            out.append(i)
    return tuple(out)


def _pack(rows: list[list[int]], targets: list[int], texts, queries, frames, contexts,
          kind: str, *, pad_id: int) -> PromptBatch:
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    shifted_frames, shifted_contexts = [], []
    for i, r in enumerate(rows):
        pad = width - len(r)
        tokens[i, pad:] = torch.tensor(r, dtype=torch.long)
        mask[i, pad:] = 1
        shifted_frames.append(tuple(p + pad for p in frames[i]))
        shifted_contexts.append(tuple(p + pad for p in contexts[i]))
    return PromptBatch(tokens=tokens, attention_mask=mask,
                       targets=torch.tensor(targets, dtype=torch.long), texts=tuple(texts),
                       queries=tuple(queries), frame_positions=tuple(shifted_frames),
                       context_positions=tuple(shifted_contexts), kind=kind,
                       pad_id=pad_id)
