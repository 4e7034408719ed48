"""Analogy items ``A:B :: C:D`` (SAT style: a stem and four-term choices) and their files.

An ``AnalogyItem`` has a stem ``(A, B)``, choices ``(C_j, D_j)`` and the answer's index. Items
with one query C have the same C in every choice; SAT-style items have a different C per
choice. ``load_items`` reads ``.jsonl`` and ``.csv``; ``split_items`` makes the seeded
validation / test split on which composite variants are chosen and reported.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path

__all__ = ["AnalogyItem", "load_items", "save_items", "split_items"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnalogyItem:
    """``A:B :: C_j:D_j``; ``choices[answer]`` is the right completion.

    Attributes:
        stem: ``(A, B)``.
        choices: ``(C, D)`` per choice.
        answer: index of the right choice.
        relation: the relation's name when known ("" otherwise).
        kind: the item family ("" for the basic items; "sat" for four-term items whose
            choices each have their own C, see ``fvlens.relational.itemgen``).
        foils: per wrong choice, how it was made (documentation; may be empty).
    """

    stem: tuple[str, str]
    choices: tuple[tuple[str, str], ...]
    answer: int
    relation: str = ""
    kind: str = ""
    foils: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.stem) != 2 or not all(isinstance(s, str) and s for s in self.stem):
            raise ValueError(f"stem must be two non-empty words, got {self.stem!r}")
        if not self.choices or any(len(c) != 2 or not all(c) for c in self.choices):
            raise ValueError(f"choices must be non-empty (C, D) word pairs, got {self.choices!r}")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"answer {self.answer} is not a choice index "
                             f"(0..{len(self.choices) - 1})")

    @property
    def query(self) -> tuple[str, str]:
        """The right ``(C, D)``, the generative format's question and answer."""
        return self.choices[self.answer]

    def to_json(self) -> dict:
        out = {"stem": list(self.stem), "choice": [list(c) for c in self.choices],
               "answer": self.answer, "relation": self.relation}
        if self.kind:
            out["kind"] = self.kind
        if self.foils:
            out["foils"] = list(self.foils)
        return out


def _item_from_json(rec, where: str) -> AnalogyItem:
    help_ = ('an item is {"stem": [A, B], "choice": [[C, D], ...], "answer": i} or '
             '{"stem": [A, B], "query": C, "choice": [D, ...], "answer": i}')
    if not isinstance(rec, dict) or not {"stem", "choice", "answer"} <= set(rec):
        raise ValueError(f"{where}: {help_}; got {rec!r}")
    choice = rec["choice"]
    if "query" in rec:
        choices = tuple((rec["query"], d) for d in choice)
    else:
        choices = tuple(tuple(c) for c in choice)
    return AnalogyItem(stem=tuple(rec["stem"]), choices=choices, answer=int(rec["answer"]),
                       relation=str(rec.get("relation", "")), kind=str(rec.get("kind", "")),
                       foils=tuple(rec.get("foils", ())))


def load_items(path: str | Path) -> list[AnalogyItem]:
    """Read analogy items from a ``.jsonl`` (SAT style) or ``.csv`` (``A,B,C,D[,D_foil...]``).

    A CSV row's choices are ``(C, D)`` then ``(C, D_foil)`` for each foil; the answer is 0. An
    optional header row starting ``A,B,C,D`` is skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"analogy file {path} does not exist; the project's items are "
                                "tasks/analogies.jsonl and tasks/analogies_hard.jsonl")
    items = []
    if path.suffix == ".jsonl":
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                items.append(_item_from_json(json.loads(line), f"{path}:{i + 1}"))
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                row = [c.strip() for c in row if c.strip()]
                if not row or (i == 0 and [c.upper() for c in row[:4]] == ["A", "B", "C", "D"]):
                    continue
                if len(row) < 4:
                    raise ValueError(f"{path}:{i + 1}: a row is A,B,C,D[,D_foil...], got {row}")
                a, b, c, d, *foils = row
                items.append(AnalogyItem(stem=(a, b), choices=((c, d), *((c, x) for x in foils)),
                                         answer=0))
    else:
        raise ValueError(f"{path}: unknown analogy format {path.suffix!r}; use .jsonl or .csv")
    if not items:
        raise ValueError(f"{path} holds no analogy items")
    return items


def save_items(path: str | Path, items: Sequence[AnalogyItem]) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(it.to_json()) + "\n" for it in items), encoding="utf-8")
    return path


def split_items(items: Sequence[AnalogyItem], *, val_fraction: float = 0.3, seed: int = 0
                ) -> tuple[list[int], list[int]]:
    """Seeded validation / test indices, stratified by relation (each relation with two or
    more items gives at least one to each side).

    Returns:
        ``(val_indices, test_indices)``, each sorted.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    by: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by.setdefault(f"{it.kind}/{it.relation}", []).append(i)
    rng = random.Random(seed)
    val, test = [], []
    for key in sorted(by):
        idx = by[key][:]
        rng.shuffle(idx)
        k = round(val_fraction * len(idx))
        k = min(max(k, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val += idx[:k]
        test += idx[k:]
    return sorted(val), sorted(test)
