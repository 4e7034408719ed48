"""Tasks: word-pair datasets with natural-language instructions.

A task is a set of ``input -> output`` pairs (``hot -> cold``) plus instructions that state it in
words. Each instruction carries its *intensional frame*: the substrings that define the task
(``"opposite"`` in "Give the opposite of the word"); removing them leaves the task undefined.
Built-in tasks live as JSON files in ``task_dir()``; the importers read the formats of Todd et
al. (2024, word-pair lists) and Davidson et al. (instruction files). See ``docs/tasks.md``.
"""

from __future__ import annotations

import difflib
import json
import os
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TASKS",
    "Pair",
    "Instruction",
    "Task",
    "load_task",
    "list_tasks",
    "task_dir",
    "save_task",
]

# The default tasks of ``fvlens run``: the embedded model's in-context tasks, those of the
# all-task baseline with ICL top-1 ≥ 0.5 (benchmarks/results/baseline_all_tasks.json) while
# zero-shot is ≈ 0.
DEFAULT_TASKS = ("capitalize", "present-past", "singular-plural", "antonym",
                 "capitalize_first_letter", "choose_first_of_3")

TASKS_DIR_ENV = "FVLENS_TASKS_DIR"
_FORMAT_HELP = (
    'a fvlens task is {"name": str, "description": str, "pairs": [{"input": str, "output": str}, '
    '...], "instructions": [{"text": str, "frame": [str, ...]}, ...], "relation_words": [str, ...]}'
    "; see docs/tasks.md"
)


def _check_str(value: object, what: str, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    if not allow_empty and not value.strip():
        raise ValueError(f"{what} must be a non-empty string")


@dataclass(frozen=True, kw_only=True)
class Pair:
    """One example of a task: ``input`` maps to ``output`` (e.g. ``hot -> cold``)."""

    input: str
    output: str

    def __post_init__(self) -> None:
        _check_str(self.input, "Pair.input")
        _check_str(self.output, "Pair.output")


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """A natural-language statement of a task and its intensional frame.

    ``frame`` lists exact (case-sensitive) substrings of ``text`` that define the task; an empty
    frame means "not annotated".
    """

    text: str
    frame: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_str(self.text, "Instruction.text")
        if isinstance(self.frame, str):
            raise ValueError(
                f"Instruction.frame must be a tuple of substrings, got the string {self.frame!r}; "
                f"write frame=({self.frame!r},)"
            )
        for part in self.frame:
            _check_str(part, f"frame substring of instruction {self.text!r}")
            if part not in self.text:
                raise ValueError(
                    f"frame substring {part!r} does not occur in instruction {self.text!r}; a frame "
                    "lists exact (case-sensitive) substrings of the text: fix the frame or the text"
                )


@dataclass(frozen=True, kw_only=True)
class Task:
    """A named word-pair task.

    Duplicate pairs (same input and output) are removed on construction with a warning.
    """

    name: str
    description: str
    pairs: tuple[Pair, ...]
    instructions: tuple[Instruction, ...] = ()
    relation_words: tuple[str, ...] = ()
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        _check_str(self.name, "Task.name")
        _check_str(self.description, f"description of task {self.name!r}", allow_empty=True)
        _check_str(self.source, f"source of task {self.name!r}", allow_empty=True)
        if not self.pairs:
            raise ValueError(f"task {self.name!r} has no pairs; give at least one input/output pair")
        for obj, kind, what in (
            *((p, Pair, "pairs") for p in self.pairs),
            *((i, Instruction, "instructions") for i in self.instructions),
        ):
            if not isinstance(obj, kind):
                raise ValueError(f"task {self.name!r}: {what} must hold {kind.__name__}s, got {obj!r}")
        for word in self.relation_words:
            _check_str(word, f"relation word of task {self.name!r}")
        unique = tuple(dict.fromkeys(self.pairs))
        if len(unique) < len(self.pairs):
            dropped = len(self.pairs) - len(unique)
            warnings.warn(
                f"task {self.name!r}: removed {dropped} duplicate pair(s) (same input and output); "
                f"{len(unique)} remain",
                stacklevel=3,
            )
            object.__setattr__(self, "pairs", unique)

    def __len__(self) -> int:
        return len(self.pairs)

    def split(self, *, test_fraction: float = 0.3, seed: int = 0) -> tuple[Task, Task]:
        """Split the pairs into seeded, disjoint train and test tasks.

        Pairs sharing an input go to the same side, so no test input is seen in training.

        Args:
            test_fraction: share of the pairs put in the test task, in (0, 1).
            seed: seed of the shuffle; the same seed gives the same split.

        Returns:
            ``(train, test)``, each a Task with this task's name, instructions and relation words.
        """
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
        groups: dict[str, list[Pair]] = {}
        for pair in self.pairs:
            groups.setdefault(pair.input, []).append(pair)
        if len(groups) < 2:
            raise ValueError(f"task {self.name!r} has {len(groups)} distinct input(s); a split needs >= 2")
        inputs = list(groups)
        random.Random(seed).shuffle(inputs)
        target = max(1, round(test_fraction * len(self.pairs)))
        test: list[Pair] = []
        n_test_inputs = 0
        for inp in inputs[:-1]:  # keep at least one input for training
            if len(test) >= target:
                break
            test.extend(groups[inp])
            n_test_inputs += 1
        train = [p for inp in inputs[n_test_inputs:] for p in groups[inp]]
        return replace(self, pairs=tuple(train)), replace(self, pairs=tuple(test))

    def sample(self, n: int, *, seed: int = 0) -> Task:
        """A seeded random subset of ``n`` pairs (in shuffled order).

        Args:
            n: number of pairs, 1 <= n <= len(self).
            seed: seed of the draw.

        Returns:
            A Task like this one with ``n`` of its pairs.
        """
        if not 1 <= n <= len(self.pairs):
            raise ValueError(f"cannot sample {n} pairs from task {self.name!r}, which has {len(self.pairs)}")
        return replace(self, pairs=tuple(random.Random(seed).sample(self.pairs, n)))


# ----------------------------------------------------------------------------- locations


def task_dir() -> Path:
    """The folder of built-in tasks: ``$FVLENS_TASKS_DIR`` if set, else ``<repo>/tasks``."""
    env = os.environ.get(TASKS_DIR_ENV)
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "tasks"
    if not path.is_dir():
        raise FileNotFoundError(
            f"task folder {path} does not exist; set {TASKS_DIR_ENV} to a folder of task JSON files "
            "or run from a checkout of fvlens that has tasks/"
        )
    return path


def list_tasks() -> list[str]:
    """Names of the built-in tasks (JSON files in ``task_dir()``), sorted."""
    return sorted(p.stem for p in task_dir().glob("*.json"))


# ----------------------------------------------------------------------------- parsing


def _read_json(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path} is empty; {_FORMAT_HELP}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {_FORMAT_HELP}") from None


def _pairs_from_json(items: Any, where: str) -> tuple[Pair, ...]:
    if not isinstance(items, list) or not items:
        raise ValueError(f"{where}: pairs must be a non-empty list of {{'input': str, 'output': str}}")
    pairs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"input", "output"}:
            raise ValueError(
                f"{where}: pair {i} must be an object with exactly the keys 'input' and 'output', got {item!r}"
            )
        for key in ("input", "output"):
            _check_str(item[key], f"{where}: pair {i} {key!r}")
        pairs.append(Pair(input=item["input"], output=item["output"]))
    return tuple(pairs)


def _str_list(items: Any, what: str) -> tuple[str, ...]:
    if not isinstance(items, list):
        raise ValueError(f"{what} must be a list of strings, got {type(items).__name__} {items!r}")
    for i, s in enumerate(items):
        _check_str(s, f"{what}[{i}]")
    return tuple(items)


def _instructions_from_json(items: Any, where: str) -> tuple[Instruction, ...]:
    if not isinstance(items, list):
        raise ValueError(f"{where}: instructions must be a list, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict) or "text" not in item or not set(item) <= {"text", "frame"}:
            raise ValueError(
                f"{where}: instruction {i} must be a string or an object "
                f"{{'text': str, 'frame': [str, ...]}}, got {item!r}"
            )
        _check_str(item["text"], f"{where}: instruction {i} 'text'")
        frame = _str_list(item.get("frame", []), f"{where}: instruction {i} 'frame'")
        out.append(Instruction(text=item["text"], frame=frame))
    return tuple(out)


def _apply_frames(
    instructions: tuple[Instruction, ...], frames: Mapping[str, Sequence[str]]
) -> tuple[Instruction, ...]:
    """Replace the frame of instructions whose text is a key of ``frames``; append the rest."""
    out = list(instructions)
    index = {ins.text: k for k, ins in enumerate(out)}
    for text, frame in frames.items():
        if isinstance(frame, str):
            raise ValueError(f"the frame of {text!r} must be a list of substrings, e.g. [{frame!r}]")
        ins = Instruction(text=text, frame=tuple(frame))
        if text in index:
            out[index[text]] = ins
        else:
            out.append(ins)
    return tuple(out)


def _task_from_json(data: Any, path: Path) -> Task:
    where = str(path)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object; {_FORMAT_HELP}")
    if "prompts" in data and "dataset_name" in data:
        raise ValueError(f"{where} is a Davidson et al. instruction file; read it with import_davidson()")
    known = {"name", "description", "pairs", "instructions", "relation_words"}
    missing = {"name", "pairs"} - set(data)
    if missing or not set(data) <= known:
        raise ValueError(
            f"{where}: missing keys {sorted(missing)}, unknown keys {sorted(set(data) - known)}; {_FORMAT_HELP}"
        )
    _check_str(data["name"], f"{where}: 'name'")
    description = data.get("description", "")
    _check_str(description, f"{where}: 'description'", allow_empty=True)
    return Task(
        name=data["name"],
        description=description,
        pairs=_pairs_from_json(data["pairs"], where),
        instructions=_instructions_from_json(data.get("instructions", []), where),
        relation_words=_str_list(data.get("relation_words", []), f"{where}: 'relation_words'"),
        source=where,
    )


def _todd_task(data: Any, path: Path, name: str | None) -> Task:
    return Task(
        name=name or path.stem,
        description=f"Imported from the Todd et al. (2024) word-pair file {path.name}.",
        pairs=_pairs_from_json(data, str(path)),
        source=str(path),
    )


# ----------------------------------------------------------------------------- public loaders


def _resolve(name_or_path: str | os.PathLike[str]) -> Path:
    text = os.fspath(name_or_path)
    looks_like_path = (
        not isinstance(name_or_path, str) or text.endswith(".json") or os.sep in text or "/" in text
    )
    if looks_like_path or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"task file {path} does not exist; built-in tasks: {list_tasks()}")
        return path
    names = list_tasks()
    if text not in names:
        close = difflib.get_close_matches(text, names, n=3)
        hint = f"did you mean {close}? " if close else ""
        raise ValueError(
            f"unknown task {text!r}; {hint}built-in tasks are {names}. "
            "Pass a path to a .json file to load your own task."
        )
    return task_dir() / f"{text}.json"


def load_task(
    name_or_path: str | os.PathLike[str], *, frames: Mapping[str, Sequence[str]] | None = None
) -> Task:
    """Load a built-in task by name, a fvlens task file, or a Todd et al. file (auto-detected).

    Args:
        name_or_path: a built-in name (see ``list_tasks()``) or a path to a ``.json`` file: a
            fvlens task (an object with ``pairs``) or a Todd et al. list of ``{input, output}``.
        frames: optional ``{instruction text: [frame substrings]}``; replaces the frame of an
            instruction with that text, or adds the instruction if the task lacks it.

    Returns:
        The validated Task, with ``source`` set to the file it came from.
    """
    path = _resolve(name_or_path)
    data = _read_json(path)
    task = _todd_task(data, path, None) if isinstance(data, list) else _task_from_json(data, path)
    if frames:
        task = replace(task, instructions=_apply_frames(task.instructions, frames))
    return task


def _to_json_text(task: Task) -> str:
    """Serialise ``task`` with one pair or instruction per line (stable, diff-friendly)."""

    def dump(obj: object) -> str:
        return json.dumps(obj, ensure_ascii=False)

    pairs = ",\n".join(f"    {dump({'input': p.input, 'output': p.output})}" for p in task.pairs)
    instructions = ",\n".join(
        f"    {dump({'text': i.text, 'frame': list(i.frame)})}" for i in task.instructions
    )
    return (
        "{\n"
        f'  "name": {dump(task.name)},\n'
        f'  "description": {dump(task.description)},\n'
        f'  "pairs": [\n{pairs}\n  ],\n'
        f'  "instructions": [' + (f"\n{instructions}\n  ],\n" if instructions else "],\n")
        + f'  "relation_words": {dump(list(task.relation_words))}\n'
        "}\n"
    )


def save_task(task: Task, path: str | os.PathLike[str]) -> None:
    """Write ``task`` as a fvlens JSON task file that ``load_task`` reads back unchanged.

    Args:
        task: the task to write.
        path: the destination ``.json`` file; its folder must exist.
    """
    Path(path).write_text(_to_json_text(task), encoding="utf-8")
