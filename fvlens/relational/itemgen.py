"""Project-owned analogy items, generated (seeded) from the project's own task files.

Two files, both written by ``python -m fvlens.relational.itemgen`` (a test checks that they are
what this module generates):

- ``tasks/analogies.jsonl`` (``builtin_items``): 8 items per relation for the 14 built-in word
  relations (``ITEM_RELATIONS``) and 6 hand-written ones (``EXTRA_RELATIONS``). One query C for
  all four choices: the answer, C itself, another output of the same relation, an output of
  another relation.
- ``tasks/analogies_hard.jsonl`` (``hard_items``): four-term SAT-style items, each choice its
  own pair ``C_j:D_j``, for the built-in relations (which a bank built from the tasks holds)
  and for relations no built-in task is: the inverses of built-in tasks, compositions of two
  (``DERIVED``) and ``EXTRA_RELATIONS``. The answer is another pair of the stem's relation; the
  foils share a word with it or are real pairs of other relations (``sat_items`` documents
  each kind), so a choice cannot be told apart by word association alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from fvlens.relational.items import AnalogyItem, save_items
from fvlens.tasks import Pair, load_task, task_dir

__all__ = ["ITEM_RELATIONS", "EXTRA_RELATIONS", "DERIVED", "SYMMETRIC", "generate_items",
           "builtin_items", "derived_relations", "sat_items", "hard_items", "write_items"]

# Built-in tasks that are word-to-word relations (the list-selection tasks are not).
ITEM_RELATIONS = ("antonym", "capitalize", "country-capital", "country-currency",
                  "english-french", "english-german", "english-spanish", "landmark-country",
                  "next_item", "prev_item", "present-past", "product-company",
                  "singular-plural", "synonym")

# Hand-written relations that no built-in task covers (so no bank vector is their own).
EXTRA_RELATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "animal-young": (("dog", "puppy"), ("cat", "kitten"), ("cow", "calf"), ("sheep", "lamb"),
                     ("horse", "foal"), ("goat", "kid"), ("bear", "cub"), ("duck", "duckling"),
                     ("frog", "tadpole"), ("swan", "cygnet")),
    "male-female": (("king", "queen"), ("man", "woman"), ("boy", "girl"), ("father", "mother"),
                    ("brother", "sister"), ("uncle", "aunt"), ("prince", "princess"),
                    ("husband", "wife"), ("son", "daughter"), ("actor", "actress")),
    "comparative": (("big", "bigger"), ("small", "smaller"), ("fast", "faster"),
                    ("tall", "taller"), ("old", "older"), ("cold", "colder"),
                    ("strong", "stronger"), ("long", "longer"), ("young", "younger"),
                    ("hard", "harder")),
    "part-whole": (("wheel", "car"), ("page", "book"), ("leaf", "tree"), ("petal", "flower"),
                   ("finger", "hand"), ("key", "keyboard"), ("room", "house"),
                   ("branch", "tree"), ("wing", "bird"), ("toe", "foot")),
    "object-color": (("banana", "yellow"), ("grass", "green"), ("sky", "blue"),
                     ("snow", "white"), ("coal", "black"), ("blood", "red"),
                     ("orange", "orange"), ("lemon", "yellow"), ("cherry", "red"),
                     ("leaf", "green")),
    "worker-tool": (("painter", "brush"), ("writer", "pen"), ("carpenter", "hammer"),
                    ("chef", "knife"), ("farmer", "plow"), ("surgeon", "scalpel"),
                    ("fisherman", "net"), ("gardener", "rake"), ("tailor", "needle"),
                    ("photographer", "camera")),
}

# Relations built from the task files that no built-in task is: ("inverse", task) swaps each
# pair; ("compose", r1, r2) maps x to z when r1 maps x to y and r2 maps y to z (an "inverse:"
# prefix inverts a task first).
DERIVED: dict[str, tuple[str, ...]] = {
    "capital-country": ("inverse", "country-capital"),
    "past-present": ("inverse", "present-past"),
    "plural-singular": ("inverse", "singular-plural"),
    "french-english": ("inverse", "english-french"),
    "german-english": ("inverse", "english-german"),
    "lowercase": ("inverse", "capitalize"),
    "french-spanish": ("compose", "inverse:english-french", "english-spanish"),
    "german-french": ("compose", "inverse:english-german", "english-french"),
    "landmark-capital": ("compose", "landmark-country", "country-capital"),
}

# Relations whose reversed pairs are pairs of the same relation (a reversed foil would be right).
SYMMETRIC = frozenset({"antonym", "synonym"})


def generate_items(relations: dict[str, Sequence[Pair]], *, per_relation: int = 8,
                   n_choices: int = 4, seed: int = 0) -> list[AnalogyItem]:
    """Analogy items from word-pair relations: stem and query are two pairs of one relation.

    Foils for ``C``: ``C`` itself (copying), the output of another pair of the same relation
    (right kind of word, wrong mapping), and outputs of other relations; every foil differs
    from every output the relation gives C.
    """
    rng = random.Random(seed)
    names = sorted(relations)
    out = []
    for name in names:
        pairs = list(dict.fromkeys(relations[name]))
        good = {}
        for p in pairs:
            good.setdefault(p.input, set()).add(p.output)
        others = [p.output for n in names if n != name for p in relations[n]]
        for _ in range(per_relation):
            stem, query = rng.sample(pairs, 2)
            if stem.input == query.input:
                continue
            foils = [query.input, rng.choice([p.output for p in pairs])]
            while len(foils) < n_choices - 1 + 8:
                foils.append(rng.choice(others))
            seen, picked = set(good[query.input]), []
            for f in foils:
                if f not in seen:
                    seen.add(f)
                    picked.append(f)
                if len(picked) == n_choices - 1:
                    break
            ds = [query.output] + picked
            order = list(range(len(ds)))
            rng.shuffle(order)
            out.append(AnalogyItem(stem=(stem.input, stem.output),
                                   choices=tuple((query.input, ds[j]) for j in order),
                                   answer=order.index(0), relation=name))
    return out


def builtin_items(*, per_relation: int = 8, seed: int = 0) -> list[AnalogyItem]:
    """The project's items (``tasks/analogies.jsonl``): built-in relations plus
    ``EXTRA_RELATIONS``, foils drawn across all of them."""
    rel = {n: load_task(n).pairs for n in ITEM_RELATIONS}
    rel |= {n: tuple(Pair(input=a, output=b) for a, b in ps) for n, ps in EXTRA_RELATIONS.items()}
    return generate_items(rel, per_relation=per_relation, seed=seed)


# --- harder items ----------------------------------------------------------------------------


def _pairs_of(spec: str) -> list[Pair]:
    if spec.startswith("inverse:"):
        return [Pair(input=p.output, output=p.input) for p in load_task(spec[8:]).pairs]
    return list(load_task(spec).pairs)


def derived_relations() -> dict[str, tuple[Pair, ...]]:
    """The pairs of every ``DERIVED`` relation (identity pairs and duplicates dropped; a
    composition keeps the first z per x)."""
    out = {}
    for name, spec in DERIVED.items():
        if spec[0] == "inverse":
            pairs = _pairs_of("inverse:" + spec[1])
        else:
            second: dict[str, str] = {}
            for p in _pairs_of(spec[2]):
                second.setdefault(p.input, p.output)
            pairs = [Pair(input=p.input, output=second[p.output]) for p in _pairs_of(spec[1])
                     if p.output in second]
        seen, keep = set(), []
        for p in pairs:
            if p.input != p.output and p.input not in seen:
                seen.add(p.input)
                keep.append(p)
        out[name] = tuple(keep)
    return out


def sat_items(relations: dict[str, Sequence[Pair]], *, per_relation: int = 6, seed: int = 0
              ) -> list[AnalogyItem]:
    """Four-term items ``A:B :: C_j:D_j`` with one right pair and three foils.

    For a stem ``A:B`` and an answer ``C:D`` of the same relation (four distinct words), the
    foils are, in this order of preference, three of:

    - ``reversed``: ``D:C`` (the answer's words, the relation's direction undone; not for
      ``SYMMETRIC`` relations, whose reversed pairs are right);
    - ``shares_word``: a pair of another relation that contains C or D (``France:euro`` for
      ``France:Paris``): a real relation on one of the answer's words;
    - ``stem_word``: a pair of another relation that contains A or B;
    - ``other_relation``: a pair of another relation.

    No foil is a pair of the stem's relation (nor its reverse, for symmetric ones).
    """
    rng = random.Random(seed)
    names = sorted(relations)
    rel = {n: list(dict.fromkeys(p for p in relations[n] if p.input != p.output)) for n in names}
    having: dict[str, list[tuple[str, Pair]]] = {}
    for n in names:
        for p in rel[n]:
            for w in (p.input, p.output):
                having.setdefault(w, []).append((n, p))
    out = []
    for name in names:
        good = {(p.input, p.output) for p in rel[name]}
        if name in SYMMETRIC:
            good |= {(b, a) for a, b in good}
        made = 0
        for _ in range(50 * per_relation):
            if made == per_relation:
                break
            stem, ans = rng.sample(rel[name], 2)
            if len({stem.input, stem.output, ans.input, ans.output}) < 4:
                continue
            used = {(stem.input, stem.output), (ans.input, ans.output)}

            def ok(p: Pair) -> bool:
                return (p.input, p.output) not in good and (p.input, p.output) not in used \
                    and p.input != p.output

            candidates: list[tuple[str, Pair]] = []
            if name not in SYMMETRIC:
                candidates.append(("reversed", Pair(input=ans.output, output=ans.input)))
            for kind, words in (("shares_word", (ans.input, ans.output)),
                                ("stem_word", (stem.input, stem.output))):
                pool = [p for w in words for n, p in having.get(w, []) if n != name]
                rng.shuffle(pool)
                candidates += [(kind, p) for p in pool[:2]]
            others = [n for n in names if n != name]
            for _ in range(6):
                candidates.append(("other_relation", rng.choice(rel[rng.choice(others)])))
            foils: list[tuple[str, Pair]] = []
            for kind, p in candidates:
                if ok(p) and all((p.input, p.output) != (q.input, q.output) for _, q in foils):
                    foils.append((kind, p))
                    used.add((p.input, p.output))
                if len(foils) == 3:
                    break
            if len(foils) < 3:
                continue
            choices = [(ans.input, ans.output)] + [(p.input, p.output) for _, p in foils]
            order = list(range(4))
            rng.shuffle(order)
            out.append(AnalogyItem(stem=(stem.input, stem.output),
                                   choices=tuple(choices[j] for j in order),
                                   answer=order.index(0), relation=name, kind="sat",
                                   foils=tuple(foils[j - 1][0] for j in order if j)))
            made += 1
    return out


def hard_items(*, per_relation: int = 6, seed: int = 0) -> list[AnalogyItem]:
    """``tasks/analogies_hard.jsonl``: SAT-style items over the built-in relations, the
    ``DERIVED`` ones and ``EXTRA_RELATIONS``, foils drawn across all of them."""
    rel = {n: load_task(n).pairs for n in ITEM_RELATIONS}
    rel |= derived_relations()
    rel |= {n: tuple(Pair(input=a, output=b) for a, b in ps) for n, ps in EXTRA_RELATIONS.items()}
    return sat_items(rel, per_relation=per_relation, seed=seed)


def write_items(folder=None) -> list:
    """Write both item files into ``folder`` (default: the built-in task folder)."""
    from pathlib import Path

    folder = Path(folder) if folder is not None else task_dir()
    return [save_items(folder / "analogies.jsonl", builtin_items()),
            save_items(folder / "analogies_hard.jsonl", hard_items())]


if __name__ == "__main__":  # regenerate the item files
    import sys

    for path in write_items(sys.argv[1] if len(sys.argv) > 1 else None):
        print(path)
