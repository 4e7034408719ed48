"""Importers of other projects' task files: Todd et al. (2024) word-pair files and Davidson et
al. instruction files, into fvlens ``Task``s (see docs/tasks.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from fvlens.tasks import (Instruction, Task, _check_str, _read_json, _str_list, _todd_task,
                          list_tasks, load_task)

__all__ = ["import_todd", "import_davidson"]


def import_todd(path: str | os.PathLike[str], *, name: str | None = None) -> Task | list[Task]:
    """Import Todd et al. (2024) word-pair files (each a JSON list of ``{input, output}``).

    Args:
        path: one file, or a folder whose ``*.json`` files are all in that format.
        name: the task name for a single file (default: the file stem).

    Returns:
        A Task for a file; a list of Tasks sorted by name for a folder.
    """
    path = Path(path)
    if path.is_dir():
        if name is not None:
            raise ValueError("name= applies to a single file; a folder's tasks are named by their file stems")
        files = sorted(path.glob("*.json"))
        if not files:
            raise ValueError(f"folder {path} holds no .json files; point import_todd at the folder of task files")
        return [_todd_task(_read_json(f), f, None) for f in files]
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a Todd et al. .json file or a folder of them")
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: a Todd et al. file is a JSON list of {{'input', 'output'}} objects")
    return _todd_task(data, path, name)


def _davidson_task(
    path: Path,
    frames: Mapping[str, Sequence[str]] | Sequence[Sequence[str]] | None,
    pairs_from: Task | None,
) -> Task:
    data = _read_json(path)
    if not isinstance(data, dict) or set(data) != {"dataset_name", "prompts"}:
        raise ValueError(
            f'{path}: a Davidson et al. file is {{"dataset_name": str, "prompts": [str, ...]}}, '
            f"got {type(data).__name__} with keys {sorted(data) if isinstance(data, dict) else []}"
        )
    name = data["dataset_name"]
    _check_str(name, f"{path}: 'dataset_name'")
    prompts = _str_list(data["prompts"], f"{path}: 'prompts'")
    if not prompts:
        raise ValueError(f"{path}: 'prompts' is empty; give at least one instruction")
    if frames is None or isinstance(frames, Mapping):
        given = frames or {}
        unknown = set(given) - set(prompts)
        if unknown:
            raise ValueError(f"{path}: frames given for prompts that the file lacks: {sorted(unknown)}")
        frame_list: list[Sequence[str]] = [given.get(p, ()) for p in prompts]
    else:
        frame_list = list(frames)
        if len(frame_list) != len(prompts):
            raise ValueError(
                f"{path}: {len(frame_list)} frames for {len(prompts)} prompts; give one list per prompt"
            )
    for text, frame in zip(prompts, frame_list):
        if isinstance(frame, str):
            raise ValueError(f"the frame of {text!r} must be a list of substrings, e.g. [{frame!r}]")
    instructions = tuple(Instruction(text=t, frame=tuple(f)) for t, f in zip(prompts, frame_list))
    if pairs_from is None:
        if name not in list_tasks():
            raise ValueError(
                f"{path}: no built-in task named {name!r} to take pairs from; pass pairs_from=load_task(...) "
                f"or import_todd(...). Built-in tasks: {list_tasks()}"
            )
        pairs_from = load_task(name)
    return Task(
        name=name,
        description=f"Instructions from the Davidson et al. file {path.name}; pairs from {pairs_from.name!r}.",
        pairs=pairs_from.pairs,
        instructions=tuple(dict.fromkeys(instructions)),
        relation_words=pairs_from.relation_words,
        source=str(path),
    )


def import_davidson(
    path: str | os.PathLike[str],
    *,
    frames: Mapping[str, Sequence[str]] | Sequence[Sequence[str]] | None = None,
    pairs_from: Task | None = None,
) -> Task | list[Task]:
    """Import Davidson et al. instruction files (``{"dataset_name": str, "prompts": [str, ...]}``).

    The files hold instructions only: the pairs come from ``pairs_from``, else from the built-in
    task named ``dataset_name``. Frames are not in the files; give them here.

    Args:
        path: one file, or a folder of such files.
        frames: ``{prompt text: [substrings]}`` or, for a single file, one list per prompt in file
            order. Prompts without a frame get an empty (unannotated) frame.
        pairs_from: the task whose pairs to use (single file only).

    Returns:
        A Task named ``dataset_name`` for a file; a list of Tasks sorted by file name for a folder.
    """
    path = Path(path)
    if path.is_dir():
        if pairs_from is not None or (frames is not None and not isinstance(frames, Mapping)):
            raise ValueError(
                "for a folder, pairs come from the built-in tasks and frames must be a "
                "{prompt text: [substrings]} dict; import files one by one to pass pairs_from or frame lists"
            )
        files = sorted(path.glob("*.json"))
        if not files:
            raise ValueError(f"folder {path} holds no .json files")
        tasks, used = [], set()
        for f in files:
            data = _read_json(f)
            prompts = set(data.get("prompts", [])) if isinstance(data, dict) else set()
            own = {t: fr for t, fr in (frames or {}).items() if t in prompts}
            used |= set(own)
            tasks.append(_davidson_task(f, own, None))
        unknown = set(frames or {}) - used
        if unknown:
            raise ValueError(f"frames given for prompts that no file in {path} holds: {sorted(unknown)}")
        return tasks
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a Davidson et al. .json file or a folder of them")
    return _davidson_task(path, frames, pairs_from)
