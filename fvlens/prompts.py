"""Prompt builders: ICL, instruction and zero-shot prompts, and their corrupted variants.

Every builder returns a ``fvlens.batch.PromptBatch``: left-padded tokens with an attention
mask, the first-token target ids, and the token positions of the parts that head scoring reads
(an instruction's frame, the demonstrations' answers). ``corrupted`` derives the corrupted
batch of causal mediation *from* a clean batch, row by row: the same query and the same
demonstrations with their labels deranged (ICL, Todd et al. 2024), or the instruction replaced
by unrelated words of the same token length (Davidson et al.).

Default template (Todd et al. 2024): ``Q: {x}\\nA: {y}\\n\\n`` per demonstration, then
``Q: {x_query}\\nA:``; the target is the first token of ``" " + y``. A template with a chat
wrapping (``fvlens.chat.chat_template``) puts instruction and zero-shot prompts in the model's
user turn and expects the answer to start the assistant's reply; the corrupted twin of an
instruction prompt replaces the instruction inside the same wrapping.
"""

from __future__ import annotations

import random
import weakref
from collections import Counter
from collections.abc import Sequence

from fvlens.batch import DEFAULT_TEMPLATE, PromptBatch, Template
from fvlens.modeltype import Model
from fvlens.tasks import Instruction, Pair, Task

__all__ = [
    "Template",
    "PromptBatch",
    "icl_prompts",
    "instruction_prompts",
    "zero_shot_prompts",
    "corrupted",
    "derangement",
    "target_ids",
    "answer_ids",
    "tokenize",
    "pad_token_id",
]

Parts = list[tuple[str, str | None]]  # (text piece, role: "frame" | "context" | None)


def tokenize(model: Model, text: str, *, bos: bool = True
             ) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text``, with BOS when the model expects one
    (and ``bos``: a chat template writes its own special tokens, so its prompts pass False).

    Special tokens written in ``text`` (``<|im_start|>`` …) are read as those tokens.
    """
    tok = model.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer; build prompts from token ids yourself")
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if bos and _adds_bos(model):
        ids, offsets = [tok.bos_token_id] + ids, [(0, 0)] + offsets
    return ids, offsets


def answer_ids(model: Model, outputs: Sequence[str], *,
               template: Template = DEFAULT_TEMPLATE) -> list[list[int]]:
    """Every token id of each ``answer_prefix + output`` (tokenized on its own, as the model
    would write it token by token after the prompt)."""
    out = []
    for y in outputs:
        toks = model.tokenizer(template.answer_prefix + y, add_special_tokens=False)["input_ids"]
        if not toks:
            raise ValueError(f"output {y!r} tokenizes to nothing")
        out.append(list(toks))
    return out


def target_ids(model: Model, outputs: Sequence[str], *,
               template: Template = DEFAULT_TEMPLATE) -> tuple[list[int], int]:
    """First token id of each ``answer_prefix + output``, and how many are multi-token."""
    ids = answer_ids(model, outputs, template=template)
    return [a[0] for a in ids], sum(len(a) > 1 for a in ids)


def zero_shot_prompts(model: Model, queries: Task | Sequence[Pair], *,
                      template: Template = DEFAULT_TEMPLATE) -> PromptBatch:
    """``Q: {x}\\nA:`` for every query pair (inside the template's chat wrapping, if any:
    the user turn then holds the query alone)."""
    qs = _pairs(queries)
    rows = [_wrap([(template.query.format(x=q.input), None)], template) for q in qs]
    return _build(model, rows, qs, "zero_shot", template)


def icl_prompts(model: Model, queries: Task | Sequence[Pair],
                demonstrations: Task | Sequence[Pair], *, shots: int = 10, seed: int = 0,
                shuffle_labels: bool = False,
                template: Template = DEFAULT_TEMPLATE) -> PromptBatch:
    """In-context prompts: ``shots`` demonstrations drawn from ``demonstrations`` per query.

    Args:
        queries: the pairs to ask about (one prompt each).
        demonstrations: the pool demonstrations are drawn from (a query is never its own demo).
        shots: demonstrations per prompt.
        seed: seeds the draw (and the label derangement).
        shuffle_labels: return ``corrupted(...)`` of the clean prompts with the same seed:
            the same demonstrations row for row, their labels deranged.
    """
    pool, qs = _pairs(demonstrations), _pairs(queries)
    if template.chat or template.forced_prefix:
        raise ValueError("ICL prompts are written without a chat template or forced prefix "
                         "(demonstrations show the answer format themselves); pass a plain "
                         "Template")
    if shots < 0:
        raise ValueError(f"shots must be ≥ 0, got {shots}")
    if len(pool) < shots + 1:
        raise ValueError(f"need at least {shots + 1} demonstration pairs for {shots}-shot "
                         f"prompts, got {len(pool)}")
    rng = random.Random(seed)
    demos = [tuple(rng.sample([p for p in pool if p != q], shots)) for q in qs]
    rows = [_icl_parts(d, q, template) for d, q in zip(demos, qs)]
    clean = _build(model, rows, qs, "icl", template, demonstrations=demos)
    return corrupted(model, clean, seed=seed) if shuffle_labels else clean


def instruction_prompts(model: Model, task: Task,
                        queries: Task | Sequence[Pair] | None = None, *,
                        instruction: int | Instruction | None = None, corrupt: bool = False,
                        seed: int = 0, template: Template = DEFAULT_TEMPLATE) -> PromptBatch:
    """``{instruction}\\nQ: {x}\\nA:`` prompts (inside the template's chat wrapping, if any).

    Args:
        task: supplies the instructions (and the queries when ``queries`` is None).
        instruction: one instruction (index or object) for every row; None cycles through
            the task's instructions row by row.
        corrupt: return ``corrupted(...)`` of the clean prompts with the same seed (the
            instruction replaced by unrelated words of the same token length).
    """
    if not task.instructions:
        raise ValueError(f"task {task.name!r} has no instructions; add some to its JSON file "
                         "or use icl_prompts")
    qs = _pairs(queries if queries is not None else task)
    if isinstance(instruction, int):
        if not -len(task.instructions) <= instruction < len(task.instructions):
            raise ValueError(f"instruction index {instruction} out of range: task "
                             f"{task.name!r} has {len(task.instructions)} instructions")
        chosen = [task.instructions[instruction]] * len(qs)
    elif isinstance(instruction, Instruction):
        chosen = [instruction] * len(qs)
    else:
        chosen = [task.instructions[i % len(task.instructions)] for i in range(len(qs))]
    rows = [_instruction_parts(_split_frames(ins.text, ins.frame), q, template)
            for ins, q in zip(chosen, qs)]
    clean = _build(model, rows, qs, "instruction", template,
                   instructions=[ins.text for ins in chosen])
    return corrupted(model, clean, seed=seed) if corrupt else clean


def corrupted(model: Model, clean: PromptBatch, *, seed: int = 0) -> PromptBatch:
    """The corrupted twin of a clean batch, row for row (the baseline of causal mediation).

    ICL rows keep their query and their demonstrations in order; the demonstrations' labels
    are deranged so that no demonstration shows its own label (Todd et al. 2024, §2.2).
    Instruction rows keep their query and template (chat wrapping included); the instruction
    becomes whole words drawn (seeded) from the vocabulary's one-token lower-case words, as
    many as make the prompt exactly as many tokens long as its clean row (Davidson et al.).

    Args:
        clean: an ``icl`` or ``instruction`` batch from ``icl_prompts``/``instruction_prompts``.
        seed: seeds the derangement or the word draw.

    Raises:
        ValueError: another kind of batch, or labels that cannot be deranged (one label is
            more than half of a row's demonstrations).
    """
    rng = random.Random(seed)
    template = clean.template
    if clean.kind == "icl":
        demos = []
        for i, row in enumerate(clean.demonstrations):
            outputs = derangement([d.output for d in row], rng, what=f"row {i}'s labels")
            demos.append(tuple(Pair(input=d.input, output=y) for d, y in zip(row, outputs)))
        rows = [_icl_parts(d, q, template) for d, q in zip(demos, clean.queries)]
        return _build(model, rows, list(clean.queries), "icl_shuffled", template,
                      demonstrations=demos)
    if clean.kind == "instruction":
        texts = []
        for i, (text, q) in enumerate(zip(clean.instructions, clean.queries)):
            if text is None:
                raise ValueError("an instruction batch row has no instruction to corrupt")
            n_tokens = len(tokenize(model, text)[0]) - int(_adds_bos(model))
            texts.append(_matched_neutral(model, q, template, n_tokens,
                                          len(clean.row_ids(i)), rng))
        rows = [_instruction_parts([(t, "context")], q, template)
                for t, q in zip(texts, clean.queries)]
        return _build(model, rows, list(clean.queries), "instruction_corrupted", template,
                      instructions=texts)
    raise ValueError(f"cannot derive a corrupted batch from a {clean.kind!r} batch; pass the "
                     "clean 'icl' or 'instruction' batch it should mirror")


def derangement(items: Sequence[str], rng: random.Random, *, what: str = "labels"
                ) -> list[str]:
    """A seeded permutation of ``items`` in which no position keeps its own value.

    Possible exactly when no value fills more than half the positions; a random shuffle is
    tried first, then the sorted sequence shifted by the largest multiplicity (always valid
    under that condition).

    Raises:
        ValueError: when no such permutation exists (the message names the repeated value).
    """
    items = list(items)
    n = len(items)
    if n == 0:
        return []
    value, m = Counter(items).most_common(1)[0]
    if 2 * m > n:
        raise ValueError(f"cannot shuffle {what} so that none keeps its own: {value!r} is {m} "
                         f"of {n}; use more shots or a task whose outputs vary more")
    for _ in range(200):
        perm = items[:]
        rng.shuffle(perm)
        if all(a != b for a, b in zip(perm, items)):
            return perm
    order = sorted(range(n), key=lambda i: items[i])
    out = [""] * n
    for j, i in enumerate(order):
        out[i] = items[order[(j + m) % n]]
    return out


# --- internals ---------------------------------------------------------------------------


def _pairs(x: Task | Sequence[Pair]) -> list[Pair]:
    return list(x.pairs) if isinstance(x, Task) else list(x)


def _adds_bos(model: Model) -> bool:
    return bool(model.cfg.default_prepend_bos and model.tokenizer.bos_token_id is not None)


def _wrap(parts: Parts, template: Template) -> Parts:
    """``parts`` inside the template's chat wrapping, followed by its forced prefix."""
    out: Parts = [(template.chat_prefix, None)] if template.chat_prefix else []
    out += parts
    tail = template.chat_suffix + template.forced_prefix
    return out + [(tail, None)] if tail else out


def _instruction_parts(instruction: Parts, q: Pair, template: Template) -> Parts:
    return _wrap(instruction + [(template.instruction_suffix, "context"),
                                (template.query.format(x=q.input), None)], template)


def _text(parts: Parts) -> str:
    return "".join(p for p, _ in parts)


def _icl_parts(demos: Sequence[Pair], q: Pair, template: Template) -> Parts:
    parts: Parts = []
    for d in demos:
        parts.append((template.query.format(x=d.input), "context"))
        parts.append((template.answer_prefix + d.output, "frame"))
        parts.append((template.demo_suffix, "context"))
    parts.append((template.query.format(x=q.input), None))
    return parts


def _split_frames(text: str, frame: Sequence[str]) -> Parts:
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


# Per tokenizer object (weakly held, so a new tokenizer at a reused address is never confused
# with a collected one).
_NEUTRAL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _neutral_words(model: Model) -> list[str]:
    """Lower-case words that are one token both alone and after a space (cached per tokenizer)."""
    tok = model.tokenizer
    if tok not in _NEUTRAL_CACHE:
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
        _NEUTRAL_CACHE[tok] = words
    return _NEUTRAL_CACHE[tok]


def _neutral_text(model: Model, n_tokens: int, rng: random.Random) -> str:
    """``n_tokens`` random whole words, each one token, joined by spaces."""
    words = _neutral_words(model)
    return " ".join(rng.choice(words) for _ in range(max(n_tokens, 1)))


def _matched_neutral(model: Model, q: Pair, template: Template, n_tokens: int,
                     length: int, rng: random.Random) -> str:
    """Neutral words that make ``q``'s instruction prompt exactly ``length`` tokens long.

    Starts from ``n_tokens`` words and corrects the count by the difference (merges at the
    instruction's edges, e.g. ``".\\n"`` in one token, can shift it by one); gives up after a
    few tries with the last draw (the length then differs by the tokenizer's merges alone).
    """
    n = max(n_tokens, 1)
    for _ in range(6):
        text = _neutral_text(model, n, rng)
        got = len(tokenize(model, _text(_instruction_parts([(text, "context")], q, template)),
                           bos=not template.chat)[0])
        if got == length or n + length - got < 1:
            break
        n += length - got
    return text


def _build(model: Model, rows: list[Parts], queries: list[Pair], kind: str,
           template: Template, *, demonstrations: Sequence[tuple[Pair, ...]] | None = None,
           instructions: Sequence[str | None] | None = None) -> PromptBatch:
    if not rows:
        raise ValueError("no queries to build prompts from")
    answers = answer_ids(model, [q.output for q in queries], template=template)
    all_ids, texts, frames, contexts = [], [], [], []
    for parts in rows:
        text = _text(parts)
        ids, offsets = tokenize(model, text, bos=not template.chat)
        spans: dict[str, list[tuple[int, int]]] = {"frame": [], "context": []}
        pos = 0
        for piece, role in parts:
            if role is not None:
                spans[role].append((pos, pos + len(piece)))
            pos += len(piece)
        all_ids.append(ids)
        texts.append(text)
        frames.append(_positions(offsets, spans["frame"]))
        contexts.append(_positions(offsets, spans["frame"] + spans["context"]))
    return PromptBatch.from_rows(all_ids, [a[0] for a in answers], kind=kind,
                                 pad_id=pad_token_id(model), texts=texts, queries=queries,
                                 frames=frames, contexts=contexts,
                                 demonstrations=demonstrations, instructions=instructions,
                                 template=template, answers=answers)


def pad_token_id(model: Model) -> int:
    """The tokenizer's pad token, else its EOS token, else 0."""
    tok = model.tokenizer
    if tok is None:
        return 0
    if tok.pad_token_id is not None:
        return tok.pad_token_id
    return tok.eos_token_id if tok.eos_token_id is not None else 0


def _positions(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> tuple[int, ...]:
    """Token positions whose characters overlap any span (ignoring pure-whitespace edges)."""
    out = []
    for i, (a, b) in enumerate(offsets):
        if b > a and any(a < e and s < b for s, e in spans):
            out.append(i)
    return tuple(out)
