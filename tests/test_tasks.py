"""The task library: built-in tasks, the JSON format, validation errors and the importers."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

from fvlens import _taskgen
from fvlens.importers import import_davidson, import_todd
from fvlens.tasks import (
    Instruction,
    Pair,
    Task,
    _to_json_text,
    list_tasks,
    load_task,
    save_task,
    task_dir,
)

MIN_PAIRS = 80
MIN_INSTRUCTIONS = 5
MIN_TASKS = 18
TODD_ANTONYM_PAIRS = 2398  # pairs in Todd et al.'s abstractive/antonym.json

REQUIRED = {
    "antonym", "synonym", "country-capital", "country-currency", "landmark-country",
    "product-company", "present-past", "singular-plural", "english-french", "english-spanish",
    "english-german", "capitalize", "capitalize_first_letter", "lowercase_first_letter",
    "next_item", "prev_item", "choose_first_of_3", "choose_first_of_5", "choose_last_of_3",
    "choose_last_of_5", "fruit_v_animal_3", "animal_v_object_3",
}


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _task(n: int = 10, **kw) -> Task:
    pairs = tuple(Pair(input=f"in{i}", output=f"out{i}") for i in range(n))
    return Task(name=kw.pop("name", "toy"), description="toy task", pairs=pairs, **kw)


# ----------------------------------------------------------------------------- built-ins


def test_enough_builtin_tasks_and_required_ones_present():
    names = list_tasks()
    assert len(names) >= MIN_TASKS
    assert REQUIRED <= set(names), REQUIRED - set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_builtin_task_is_well_formed(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # built-ins must hold no duplicate pairs
        task = load_task(name)
    assert task.name == name
    assert task.description
    assert len(task) >= MIN_PAIRS
    assert len(set(task.pairs)) == len(task)
    inputs = [p.input for p in task.pairs]
    assert len(set(inputs)) == len(inputs), "an input with two answers is ambiguous"
    assert len(task.instructions) >= MIN_INSTRUCTIONS
    for ins in task.instructions:
        assert ins.frame, f"instruction {ins.text!r} has no frame"
        assert all(part in ins.text for part in ins.frame)
    assert task.relation_words
    assert Path(task.source) == task_dir() / f"{name}.json"


def test_builtin_facts_spot_checks():
    def lookup(name: str) -> dict[str, str]:
        return {p.input: p.output for p in load_task(name).pairs}

    assert lookup("country-capital")["Australia"] == "Canberra"
    assert lookup("country-currency")["Japan"] == "yen"
    assert lookup("english-french")["dog"] == "chien"
    assert lookup("english-german")["house"] == "Haus"
    assert lookup("present-past")["go"] == "went"
    assert lookup("singular-plural")["child"] == "children"
    assert lookup("capitalize")["apple"] == "Apple"
    assert lookup("capitalize_first_letter")["apple"] == "A"
    assert lookup("lowercase_first_letter")["APPLE"] == "a"
    assert lookup("next_item")["Sunday"] == "Monday"
    assert lookup("prev_item")["January"] == "December"


def test_extractive_tasks_answer_from_their_input():
    for name, k in [("choose_first_of_3", 3), ("choose_first_of_5", 5)]:
        for p in load_task(name).pairs:
            words = p.input.split(", ")
            assert len(words) == k and p.output == words[0]
    for p in load_task("choose_last_of_5").pairs:
        assert p.output == p.input.split(", ")[-1]
    for p in load_task("fruit_v_animal_3").pairs:
        words = p.input.split(", ")
        assert p.output in words and p.output in _taskgen.FRUITS
        assert sum(w in _taskgen.ANIMALS for w in words) == 2


def test_generator_reproduces_committed_files():
    for task in _taskgen.generated_tasks():
        committed = (task_dir() / f"{task.name}.json").read_text(encoding="utf-8")
        assert _to_json_text(task) == committed, (
            f"tasks/{task.name}.json is stale: run python -m fvlens._taskgen"
        )


def test_task_dir_env_override(tmp_path, monkeypatch):
    save_task(_task(name="mine"), tmp_path / "mine.json")
    monkeypatch.setenv("FVLENS_TASKS_DIR", str(tmp_path))
    assert list_tasks() == ["mine"]
    assert len(load_task("mine")) == 10
    monkeypatch.setenv("FVLENS_TASKS_DIR", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="FVLENS_TASKS_DIR"):
        task_dir()


# ----------------------------------------------------------------------------- Task API


def test_split_is_deterministic_and_disjoint():
    task = load_task("antonym")
    train, test = task.split(test_fraction=0.3, seed=1)
    train2, test2 = task.split(test_fraction=0.3, seed=1)
    assert train.pairs == train2.pairs and test.pairs == test2.pairs
    assert not set(train.pairs) & set(test.pairs)
    assert not {p.input for p in train.pairs} & {p.input for p in test.pairs}
    assert set(train.pairs) | set(test.pairs) == set(task.pairs)
    assert abs(len(test) - round(0.3 * len(task))) <= 1
    assert train.instructions == task.instructions
    other, _ = task.split(test_fraction=0.3, seed=2)
    assert other.pairs != train.pairs


def test_split_keeps_pairs_with_one_input_together():
    pairs = tuple(Pair(input=f"w{i // 2}", output=f"o{i}") for i in range(20))
    train, test = Task(name="t", description="", pairs=pairs).split(test_fraction=0.5, seed=0)
    assert not {p.input for p in train.pairs} & {p.input for p in test.pairs}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        _task().split(test_fraction=fraction)


def test_sample_is_seeded_subset():
    task = _task(30)
    a, b = task.sample(5, seed=3), task.sample(5, seed=3)
    assert a.pairs == b.pairs and len(a) == 5 and set(a.pairs) <= set(task.pairs)
    with pytest.raises(ValueError, match="cannot sample 31"):
        task.sample(31)


def test_duplicate_pairs_removed_with_warning(tmp_path):
    data = {"name": "dup", "pairs": [{"input": "a", "output": "b"}] * 3 + [{"input": "c", "output": "d"}]}
    with pytest.warns(UserWarning, match="removed 2 duplicate"):
        task = load_task(_write(tmp_path / "dup.json", data))
    assert len(task) == 2


def test_save_load_round_trip(tmp_path):
    task = load_task("country-capital")
    save_task(task, tmp_path / "cc.json")
    again = load_task(tmp_path / "cc.json")
    assert again == task and again.source == str(tmp_path / "cc.json")


def test_frames_argument_sets_and_adds_instructions(tmp_path):
    path = _write(tmp_path / "t.json", {"name": "t", "pairs": [{"input": "a", "output": "b"}],
                                        "instructions": ["Say the opposite."]})
    task = load_task(path, frames={"Say the opposite.": ["opposite"], "Antonym please.": ["Antonym"]})
    assert task.instructions == (
        Instruction(text="Say the opposite.", frame=("opposite",)),
        Instruction(text="Antonym please.", frame=("Antonym",)),
    )


# ----------------------------------------------------------------------------- errors


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown task 'antonyms'.*did you mean \['antonym'") as err:
        load_task("antonyms")
    assert "country-capital" in str(err.value)  # lists the built-ins


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("no/such/task.json")


def test_frame_not_in_instruction():
    with pytest.raises(ValueError, match="'antonym' does not occur"):
        Instruction(text="Give the opposite.", frame=("antonym",))


def test_frame_given_as_string():
    # Without run-time type checking our own check raises ValueError; under the test suite's
    # jaxtyping/beartype hook the annotation check fires first (TypeCheckError is a TypeError).
    with pytest.raises((ValueError, TypeError), match="opposite"):
        Instruction(text="Give the opposite.", frame="opposite")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("{not json", "not valid JSON"),
        ("[]", "non-empty list"),
        ('{"name": "x"}', r"missing keys \['pairs'\]"),
        ('{"name": "x", "pairs": [], "extra": 1}', "unknown keys"),
        ('{"name": "x", "pairs": []}', "non-empty list"),
        ('{"name": "x", "pairs": [{"input": "a"}]}', "exactly the keys"),
        ('{"name": "x", "pairs": [{"input": "a", "output": 3}]}', "must be a string"),
        ('{"name": 5, "pairs": [{"input": "a", "output": "b"}]}', "'name' must be a string"),
        ('{"name": "x", "pairs": [{"input": "a", "output": "b"}], "instructions": [{"text": "Go", "frame": ["up"]}]}',
         "'up' does not occur"),
        ('{"name": "x", "pairs": [{"input": "a", "output": "b"}], "instructions": [{"text": 1}]}',
         "must be a string"),
        ('{"name": "x", "pairs": [{"input": "a", "output": "b"}], "relation_words": "up"}',
         "must be a list of strings"),
        ('{"dataset_name": "x", "prompts": ["Go"]}', "import_davidson"),
        ('"just a string"', "expected a JSON object"),
    ],
)
def test_malformed_files_raise_with_fix(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_task(path)


def test_task_without_pairs():
    with pytest.raises(ValueError, match="no pairs"):
        Task(name="empty", description="", pairs=())


# ----------------------------------------------------------------------------- importers


def test_import_todd_tmp_file(tmp_path):
    pairs = [{"input": "hot", "output": "cold"}, {"input": "up", "output": "down"}]
    path = _write(tmp_path / "opposites.json", pairs)
    task = import_todd(path)
    assert isinstance(task, Task) and task.name == "opposites" and len(task) == 2
    assert import_todd(path, name="anto").name == "anto"
    assert load_task(path) == task  # auto-detected by load_task
    with pytest.raises(ValueError, match="Todd et al. file is a JSON list"):
        import_todd(_write(tmp_path / "obj.json", {"pairs": pairs}))


def test_import_todd_folder(tmp_path):
    for name in ("a", "b"):
        _write(tmp_path / f"{name}.json", [{"input": name, "output": name.upper()}])
    tasks = import_todd(tmp_path)
    assert [t.name for t in tasks] == ["a", "b"]
    with pytest.raises(ValueError, match="single file"):
        import_todd(tmp_path, name="x")
    with pytest.raises(ValueError, match="no .json files"):
        empty = tmp_path / "empty"
        empty.mkdir()
        import_todd(empty)


def test_import_todd_real_antonym(shared_data):
    path = os.path.join(shared_data, "function_vectors", "abstractive", "antonym.json")
    task = import_todd(path)
    assert task.name == "antonym" and len(task) == TODD_ANTONYM_PAIRS
    assert len(load_task(path)) == TODD_ANTONYM_PAIRS


def test_import_todd_real_folder(shared_data):
    folder = os.path.join(shared_data, "function_vectors", "abstractive")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some upstream files repeat pairs
        tasks = import_todd(folder)
    assert len(tasks) >= 20
    assert "country-capital" in {t.name for t in tasks}


def test_import_davidson(tmp_path):
    prompts = ["Give the opposite of the word.", "Write its antonym."]
    path = _write(tmp_path / "d.json", {"dataset_name": "antonym", "prompts": prompts})
    task = import_davidson(path, frames=[["opposite"], ["antonym"]])
    assert task.name == "antonym" and len(task) == len(load_task("antonym"))
    assert [i.frame for i in task.instructions] == [("opposite",), ("antonym",)]
    by_text = import_davidson(path, frames={prompts[1]: ["antonym"]}, pairs_from=_task())
    assert len(by_text) == 10 and by_text.instructions[0].frame == ()
    assert by_text.instructions[1].frame == ("antonym",)
    with pytest.raises(ValueError, match="2 frames for 1 prompts|1 frames for 2 prompts"):
        import_davidson(path, frames=[["opposite"]])
    with pytest.raises(ValueError, match="does not occur"):
        import_davidson(path, frames=[["opposite"], ["synonym"]])
    with pytest.raises(ValueError, match="lacks"):
        import_davidson(path, frames={"Not a prompt": ["x"]})
    other = _write(tmp_path / "o.json", {"dataset_name": "mystery", "prompts": prompts})
    with pytest.raises(ValueError, match="pairs_from"):
        import_davidson(other)
    bad = _write(tmp_path / "bad.json", {"name": "x", "prompts": prompts})
    with pytest.raises(ValueError, match="dataset_name"):
        import_davidson(bad)


def test_import_davidson_folder(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    _write(folder / "a.json", {"dataset_name": "antonym", "prompts": ["Give the opposite."]})
    _write(folder / "s.json", {"dataset_name": "synonym", "prompts": ["Give a synonym."]})
    tasks = import_davidson(folder, frames={"Give a synonym.": ["synonym"]})
    assert [t.name for t in tasks] == ["antonym", "synonym"]
    assert tasks[1].instructions[0].frame == ("synonym",)
    with pytest.raises(ValueError, match="no file"):
        import_davidson(folder, frames={"Other.": ["Other"]})
