"""The one batch type: left-padded prompts with their targets and the positions scoring reads.

A ``PromptBatch`` is built from rows of token ids (``PromptBatch.from_rows``; the prompt
builders of ``fvlens.prompts`` do it) and owns everything that depends on the padding:
``select``/``chunks``/``concat`` re-pad, ``to`` moves the tensors, and each row remembers how
it was written (its demonstrations as shown, its instruction) so that a corrupted batch can be
derived from it (``fvlens.prompts.corrupted``). Left padding puts every row's last real token
at position -1, so "the last position" is the same token in every row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from fvlens.tasks import Pair

__all__ = ["Template", "DEFAULT_TEMPLATE", "PromptBatch", "pad_left", "auto_batch_size",
           "TOKENS_PER_PASS"]

# Rows per forward pass are sized so that a pass holds about this many tokens (CPU default;
# ``fvlens.forward.map_chunks`` halves a chunk on out-of-memory errors).
TOKENS_PER_PASS = 1600


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


def pad_left(rows: Sequence[Sequence[int]], pad_id: int
             ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Token rows → left-padded ``(tokens, attention_mask)``; the one padding of fvlens.

    Raises:
        ValueError: no rows, or an empty row (nothing to predict from).
    """
    if not rows:
        raise ValueError("no prompts to pad")
    if any(len(r) == 0 for r in rows):
        raise ValueError("a prompt tokenizes to nothing (and the model adds no BOS)")
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return tokens, mask


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromptBatch:
    """A left-padded batch of prompts with targets and the positions head scoring reads.

    Attributes:
        tokens: token ids, left-padded with ``pad_id``.
        attention_mask: 1 for real tokens, 0 for padding.
        targets: first token id of each row's expected answer.
        texts: the prompt strings (without BOS).
        queries: the query pair of each row.
        frame_positions: per row, the positions (in padded coordinates) of the tokens that
            define the task: the instruction's frame substrings, or in ICL prompts the
            demonstrations' answer tokens.
        context_positions: per row, the positions of every instruction or demonstration token.
        kind: "icl", "icl_shuffled", "instruction", "instruction_corrupted", "zero_shot" (or
            any name for hand-built batches).
        pad_id: the padding token.
        demonstrations: per row, the demonstrations as shown (labels as written, shuffled in
            a corrupted batch); empty for zero-shot and instruction prompts.
        instructions: per row, the instruction text as shown (None without one).
        template: how the rows were written.
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
    demonstrations: tuple[tuple[Pair, ...], ...] | None = None
    instructions: tuple[str | None, ...] | None = None
    template: Template = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        if self.tokens.shape != self.attention_mask.shape:
            raise ValueError(f"PromptBatch.tokens {tuple(self.tokens.shape)} and attention_mask "
                             f"{tuple(self.attention_mask.shape)} differ")
        if self.targets.shape != (n,):
            raise ValueError(f"PromptBatch.targets has shape {tuple(self.targets.shape)}, "
                             f"expected ({n},)")
        for name in ("texts", "queries", "frame_positions", "context_positions"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PromptBatch.{name} has {len(getattr(self, name))} rows, "
                                 f"tokens has {n}")
        if self.demonstrations is None:
            object.__setattr__(self, "demonstrations", ((),) * n)
        if self.instructions is None:
            object.__setattr__(self, "instructions", (None,) * n)
        for name in ("demonstrations", "instructions"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PromptBatch.{name} has {len(getattr(self, name))} rows, "
                                 f"tokens has {n}")

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]], targets: Sequence[int], *, kind: str,
                  pad_id: int = 0, texts: Sequence[str] | None = None,
                  queries: Sequence[Pair] | None = None,
                  frames: Sequence[Sequence[int]] | None = None,
                  contexts: Sequence[Sequence[int]] | None = None,
                  demonstrations: Sequence[tuple[Pair, ...]] | None = None,
                  instructions: Sequence[str | None] | None = None,
                  template: Template = DEFAULT_TEMPLATE) -> PromptBatch:
        """A batch from unpadded token rows; ``frames``/``contexts`` are unpadded positions.

        Args:
            rows: token ids of each prompt (BOS included where the model expects one).
            targets: the target token id of each row.
            kind: the batch kind (see the class docstring).
            pad_id: padding token.
            texts, queries, frames, contexts, demonstrations, instructions: per-row metadata;
                missing ones default to empty values.
        """
        n = len(rows)
        tokens, mask = pad_left(rows, pad_id)
        pads = [tokens.shape[1] - len(r) for r in rows]

        def shift(table: Sequence[Sequence[int]] | None) -> tuple[tuple[int, ...], ...]:
            if table is None:
                return ((),) * n
            return tuple(tuple(p + pad for p in pos) for pos, pad in zip(table, pads))

        return cls(tokens=tokens, attention_mask=mask,
                   targets=torch.as_tensor(list(targets), dtype=torch.long),
                   texts=tuple(texts) if texts is not None else ("",) * n,
                   queries=tuple(queries) if queries is not None else
                   (Pair(input="", output=""),) * n,
                   frame_positions=shift(frames), context_positions=shift(contexts), kind=kind,
                   pad_id=pad_id,
                   demonstrations=tuple(demonstrations) if demonstrations is not None else None,
                   instructions=tuple(instructions) if instructions is not None else None,
                   template=template)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_pad(self) -> Int[Tensor, " batch"]:
        return (self.attention_mask == 0).sum(-1)

    def row_ids(self, i: int) -> list[int]:
        """Row ``i``'s token ids without padding."""
        return self.tokens[i, int(self.n_pad[i]):].tolist()

    def _unpadded(self, table, i: int) -> tuple[int, ...]:
        pad = int(self.n_pad[i])
        return tuple(p - pad for p in table[i])

    def select(self, rows: Sequence[int] | Tensor) -> PromptBatch:
        """The sub-batch of the given rows (in that order), re-padded to its longest row."""
        return PromptBatch.concat([self], rows=[[int(i) for i in (
            rows.tolist() if isinstance(rows, Tensor) else rows)]])

    def chunks(self, size: int) -> list[PromptBatch]:
        """Consecutive sub-batches of at most ``size`` rows."""
        if size < 1:
            raise ValueError(f"chunk size must be ≥ 1, got {size}")
        return [self.select(range(i, min(i + size, len(self)))) for i in range(0, len(self), size)]

    @staticmethod
    def concat(batches: Sequence[PromptBatch], *,
               rows: Sequence[Sequence[int]] | None = None) -> PromptBatch:
        """One batch with the rows of ``batches`` in order (``rows[j]`` picks rows of batch j),
        re-padded; kind, pad id and template come from the first batch."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        picks = rows if rows is not None else [range(len(b)) for b in batches]
        ids, targets, texts, queries, frames, contexts, demos, instructions = \
            [], [], [], [], [], [], [], []
        for b, pick in zip(batches, picks):
            for i in pick:
                ids.append(b.row_ids(i))
                targets.append(int(b.targets[i]))
                texts.append(b.texts[i])
                queries.append(b.queries[i])
                frames.append(b._unpadded(b.frame_positions, i))
                contexts.append(b._unpadded(b.context_positions, i))
                demos.append(b.demonstrations[i])
                instructions.append(b.instructions[i])
        if not ids:
            raise ValueError("no rows selected: a PromptBatch needs at least one row")
        first = batches[0]
        return PromptBatch.from_rows(ids, targets, kind=first.kind, pad_id=first.pad_id,
                                     texts=texts, queries=queries, frames=frames,
                                     contexts=contexts, demonstrations=demos,
                                     instructions=instructions, template=first.template)

    def to(self, device: str | torch.device) -> PromptBatch:
        """The batch with its tensors on ``device``."""
        return dataclasses.replace(self, tokens=self.tokens.to(device),
                                   attention_mask=self.attention_mask.to(device),
                                   targets=self.targets.to(device))


def auto_batch_size(batch: PromptBatch, batch_size: int | None, *,
                    tokens_per_pass: int = TOKENS_PER_PASS) -> int:
    """``batch_size`` if given, else the rows of ``batch``'s width that fit ``tokens_per_pass``
    (at least 4; at most 64 at the CPU budget, 1024 with a larger one): short zero-shot prompts
    run in few passes, long ICL ones in more."""
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        return batch_size
    most = 64 if tokens_per_pass <= TOKENS_PER_PASS else 1024
    return max(4, min(most, tokens_per_pass // max(1, batch.tokens.shape[1])))
