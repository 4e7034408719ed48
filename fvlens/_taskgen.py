"""Generate the rule-based built-in tasks (letters, sequences, extractive choice) from word lists.

The JSON files in ``tasks/`` for these tasks are the output of this module; regenerate them with
``python -m fvlens._taskgen [folder]`` (default: ``task_dir()``). Generation is deterministic
(seeded ``random.Random``) and a test checks that it reproduces the committed files.
"""

from __future__ import annotations

import random
import string
import sys
from collections.abc import Callable
from pathlib import Path

from fvlens.tasks import Instruction, Pair, Task, _to_json_text, task_dir

__all__ = ["generated_tasks", "write_generated_tasks"]

N_EXTRACTIVE = 120  # pairs per extractive task
SEED = 0

WORDS = """
apple table house water river mountain garden window paper pencil school teacher doctor farmer
music story friend family mother father sister brother money market summer winter spring autumn
morning evening kitchen bottle basket flower forest island ocean planet rocket silver golden
yellow orange purple simple happy quiet little bright strong gentle clever honest proud brave
dinner supper butter cheese bread sugar coffee candle button jacket pocket ticket letter number
picture camera guitar piano violin doctor castle bridge tower village city country animal rabbit
monkey tiger zebra horse chicken turkey donkey kitten puppy dragon sword shield crown king queen
prince lady baby child woman man people world earth moon star cloud storm thunder rain snow wind
fire stone sand glass metal wood paint color circle square corner center middle border desert
valley meadow field farm barn fence gate road street train plane boat ship truck wagon wheel
""".split()

FRUITS = """
apple banana orange grape lemon cherry peach pear plum mango melon lime strawberry
pineapple watermelon apricot coconut papaya blueberry raspberry fig
""".split()

ANIMALS = """
dog cat horse cow pig sheep goat lion tiger bear wolf fox rabbit mouse deer zebra giraffe
elephant monkey camel donkey frog snake turtle duck goose owl eagle shark whale dolphin
squirrel kangaroo panda rat bat hippo rhino leopard
""".split()

OBJECTS = """
chair table lamp pencil book cup spoon fork knife plate bottle hammer brush clock phone
computer key door window bed sofa desk mirror shoe hat coat umbrella bag box ball candle
wallet ladder bucket scissors pillow blanket basket guitar drum radio
""".split()

NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
ORDINALS = "first second third fourth fifth sixth seventh eighth ninth tenth".split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = (
    "January February March April May June July August September October November December"
).split()


def _ins(*specs: tuple[str, tuple[str, ...]]) -> tuple[Instruction, ...]:
    return tuple(Instruction(text=t, frame=f) for t, f in specs)


def _unique(words: list[str]) -> list[str]:
    return list(dict.fromkeys(words))


def _sequences() -> list[tuple[str, str]]:
    """Consecutive pairs of ordered series; cyclic for days and months."""
    digits = [str(i) for i in range(1, 31)]
    out: list[tuple[str, str]] = []
    for series, cyclic in (
        (NUMBER_WORDS, False),
        (digits, False),
        (ORDINALS, False),
        (DAYS, True),
        (MONTHS, True),
        (list(string.ascii_lowercase), False),
        (list(string.ascii_uppercase), False),
    ):
        ends = series + series[:1] if cyclic else series
        out.extend(zip(ends[:-1], ends[1:]))
    return out


def _extractive(
    name: str, draw: Callable[[random.Random], tuple[list[str], str]]
) -> tuple[Pair, ...]:
    """``N_EXTRACTIVE`` pairs with distinct inputs from a seeded ``draw(rng) -> (words, answer)``."""
    rng = random.Random(f"{SEED}:{name}")
    pairs: dict[str, Pair] = {}
    while len(pairs) < N_EXTRACTIVE:
        words, answer = draw(rng)
        text = ", ".join(words)
        pairs.setdefault(text, Pair(input=text, output=answer))
    return tuple(pairs.values())


def _choose(position: int, k: int) -> Callable[[random.Random], tuple[list[str], str]]:
    pool = _unique(FRUITS + ANIMALS + OBJECTS)

    def draw(rng: random.Random) -> tuple[list[str], str]:
        words = rng.sample(pool, k)
        return words, words[position]

    return draw


def _odd_one(target: list[str], others: list[str]) -> Callable[[random.Random], tuple[list[str], str]]:
    def draw(rng: random.Random) -> tuple[list[str], str]:
        answer = rng.choice(target)
        words = rng.sample(others, 2) + [answer]
        rng.shuffle(words)
        return words, answer

    return draw


def _choose_instructions(which: str, side: str) -> tuple[Instruction, ...]:
    return _ins(
        (f"Choose the {which} word in the list.", (which,)),
        (f"Repeat the {which} item.", (f"{which} item",)),
        (f"Give the word that comes {which}.", (f"comes {which}",)),
        (f"Which word is listed {which}?", (f"listed {which}",)),
        (f"Answer with the {side} word of the list.", (side,)),
    )


def _pick_instructions(kind: str, others: str) -> tuple[Instruction, ...]:
    return _ins(
        (f"Pick the {kind} from the list.", (kind,)),
        (f"Which of these words is an {kind}?" if kind[0] in "aeiou" else f"Which of these words is a {kind}?",
         (f"is an {kind}" if kind[0] in "aeiou" else f"is a {kind}",)),
        (f"Give the {kind}, not the {others}.", (f"the {kind}",)),
        (f"Answer with the word that names {'an' if kind[0] in 'aeiou' else 'a'} {kind}.", ("names",  kind)),
        (f"Find the {kind} among these words.", (f"Find the {kind}",)),
    )


def generated_tasks() -> list[Task]:
    """All generated built-in tasks, in a fixed order."""
    words = _unique(WORDS)
    seq = _sequences()
    tasks = [
        Task(
            name="capitalize",
            description="Write a lowercase word with its first letter capitalized.",
            pairs=tuple(Pair(input=w, output=w.capitalize()) for w in words),
            instructions=_ins(
                ("Capitalize the word.", ("Capitalize",)),
                ("Write the word with its first letter in upper case.", ("first letter in upper case",)),
                ("Rewrite each word starting with a capital letter.", ("starting with a capital letter",)),
                ("Give the word with an uppercase initial.", ("uppercase initial",)),
                ("Answer with the word, capitalized.", ("capitalized",)),
            ),
            relation_words=("capital", "uppercase", "capitalize"),
        ),
        Task(
            name="capitalize_first_letter",
            description="Give the first letter of a lowercase word, in upper case.",
            pairs=tuple(Pair(input=w, output=w[0].upper()) for w in words),
            instructions=_ins(
                ("Give the first letter of the word in upper case.", ("first letter", "upper case")),
                ("Write the first letter of each word as a capital.", ("first letter", "capital")),
                ("What is the initial of this word, capitalized?", ("initial", "capitalized")),
                ("Answer with the word's first letter in uppercase.", ("first letter", "uppercase")),
                ("Name the capital letter the word starts with.", ("capital letter", "starts with")),
            ),
            relation_words=("first", "letter", "capital", "initial"),
        ),
        Task(
            name="lowercase_first_letter",
            description="Give the first letter of an UPPERCASE word, in lower case.",
            pairs=tuple(Pair(input=w.upper(), output=w[0]) for w in words),
            instructions=_ins(
                ("Give the first letter of the word in lower case.", ("first letter", "lower case")),
                ("Write the first letter of each word as a small letter.", ("first letter", "small letter")),
                ("What is the initial of this word, in lowercase?", ("initial", "lowercase")),
                ("Answer with the word's first letter in lowercase.", ("first letter", "lowercase")),
                ("Name the lowercase letter the word starts with.", ("lowercase letter", "starts with")),
            ),
            relation_words=("first", "letter", "lowercase", "initial"),
        ),
        Task(
            name="next_item",
            description="Give the item that follows in an ordered series (numbers, days, months, letters).",
            pairs=tuple(Pair(input=a, output=b) for a, b in seq),
            instructions=_ins(
                ("Give the next item in the sequence.", ("next",)),
                ("What comes after this?", ("comes after",)),
                ("Write the item that follows.", ("follows",)),
                ("Answer with the one after it in order.", ("after it in order",)),
                ("Continue the sequence by one step.", ("Continue the sequence",)),
            ),
            relation_words=("next", "after", "following", "successor"),
        ),
        Task(
            name="prev_item",
            description="Give the item that comes before in an ordered series (numbers, days, months, letters).",
            pairs=tuple(Pair(input=b, output=a) for a, b in seq),
            instructions=_ins(
                ("Give the previous item in the sequence.", ("previous",)),
                ("What comes before this?", ("comes before",)),
                ("Write the item that precedes it.", ("precedes",)),
                ("Answer with the one before it in order.", ("before it in order",)),
                ("Step the sequence back by one.", ("back by one",)),
            ),
            relation_words=("previous", "before", "preceding", "predecessor"),
        ),
    ]
    for k in (3, 5):
        for which, position, side in (("first", 0, "leftmost"), ("last", -1, "rightmost")):
            name = f"choose_{which}_of_{k}"
            tasks.append(
                Task(
                    name=name,
                    description=f"Copy the {which} of {k} comma-separated words.",
                    pairs=_extractive(name, _choose(position, k)),
                    instructions=_choose_instructions(which, side),
                    relation_words=(which, "position", "list"),
                )
            )
    tasks.append(
        Task(
            name="fruit_v_animal_3",
            description="Copy the one fruit from a list of a fruit and two animals.",
            pairs=_extractive("fruit_v_animal_3", _odd_one(FRUITS, ANIMALS)),
            instructions=_pick_instructions("fruit", "animals"),
            relation_words=("fruit", "food", "plant"),
        )
    )
    tasks.append(
        Task(
            name="animal_v_object_3",
            description="Copy the one animal from a list of an animal and two objects.",
            pairs=_extractive("animal_v_object_3", _odd_one(ANIMALS, OBJECTS)),
            instructions=_pick_instructions("animal", "objects"),
            relation_words=("animal", "creature", "living"),
        )
    )
    return tasks


def write_generated_tasks(folder: str | Path | None = None) -> list[Path]:
    """Write every generated task to ``<folder>/<name>.json`` (default: ``task_dir()``).

    Args:
        folder: destination folder; it must exist.

    Returns:
        The paths written.
    """
    out = Path(folder) if folder is not None else task_dir()
    paths = []
    for task in generated_tasks():
        path = out / f"{task.name}.json"
        path.write_text(_to_json_text(task), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_generated_tasks(sys.argv[1] if len(sys.argv) > 1 else None):
        print(p)
