"""Prompt builders: templates, left padding, targets, frame positions, corrupted variants."""

from __future__ import annotations

import pytest
import torch

from fvlens.evaluation import evaluate, last_logits, ranks_of
from fvlens.prompts import (Template, icl_prompts, instruction_prompts, target_ids,
                            zero_shot_prompts)
from fvlens.tasks import Instruction, Pair, Task, load_task


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task("antonym")


def test_icl_text_follows_todd_template(tiny_tok_model, task):
    q = [Pair(input="hot", output="cold")]
    demos = [Pair(input=f"a{i}", output=f"b{i}") for i in range(5)]
    b = icl_prompts(tiny_tok_model, q, demos, shots=2, seed=1)
    text = b.texts[0]
    assert text.endswith("Q: hot\nA:") and text.count("Q: ") == 3
    assert text.count("\n\n") == 2 and " b" in text
    for d in demos:
        if f"Q: {d.input}\nA: " in text:
            assert f"Q: {d.input}\nA: {d.output}\n\n" in text


def test_targets_are_first_token_of_space_output(tiny_tok_model):
    ids, multi = target_ids(tiny_tok_model, ["cold", "hot"])
    tok = tiny_tok_model.tokenizer
    assert ids == [tok(" cold", add_special_tokens=False).input_ids[0],
                   tok(" hot", add_special_tokens=False).input_ids[0]]
    assert multi == sum(len(tok(" " + w, add_special_tokens=False).input_ids) > 1
                        for w in ["cold", "hot"])


def test_left_padding_keeps_last_token_last(tiny_tok_model, task):
    b = zero_shot_prompts(tiny_tok_model, [Pair(input="a", output="b"),
                                           Pair(input="extraordinarily", output="x")])
    assert (b.attention_mask[:, -1] == 1).all()
    assert b.attention_mask[0].sum() < b.attention_mask[1].sum()
    # The padded row's last-token logits equal the unpadded single prompt's.
    single = zero_shot_prompts(tiny_tok_model, [Pair(input="a", output="b")])
    torch.testing.assert_close(last_logits(tiny_tok_model, b)[0],
                               last_logits(tiny_tok_model, single)[0], atol=1e-5, rtol=0)


def test_icl_frame_positions_are_demo_answers(tiny_tok_model, task):
    train, test = task.split(seed=0)
    b = icl_prompts(tiny_tok_model, test.pairs[:3], train, shots=3, seed=0)
    tok = tiny_tok_model.tokenizer
    for row in range(3):
        frame_text = "".join(tok.decode(b.tokens[row, p]) for p in b.frame_positions[row])
        demos_answers = [line.split("A: ")[1] for line in b.texts[row].split("\n")
                         if line.startswith("A: ")]
        for ans in demos_answers:
            assert ans in frame_text
        assert set(b.frame_positions[row]) <= set(b.context_positions[row])
        assert max(b.context_positions[row]) < b.tokens.shape[1] - 2


def test_instruction_frame_positions(tiny_tok_model):
    t = Task(name="t", description="d", pairs=tuple(Pair(input=f"w{i}", output=f"v{i}")
                                                    for i in range(4)),
             instructions=(Instruction(text="Give the opposite of the word", frame=("opposite",)),))
    b = instruction_prompts(tiny_tok_model, t)
    tok = tiny_tok_model.tokenizer
    frame = "".join(tok.decode(b.tokens[0, p]) for p in b.frame_positions[0])
    assert "opposite" in frame and "Give" not in frame
    assert b.texts[0] == "Give the opposite of the word\nQ: w0\nA:"


def test_corrupted_instruction_has_same_token_length(tiny_tok_model, task):
    clean = instruction_prompts(tiny_tok_model, task, task.pairs[:6])
    bad = instruction_prompts(tiny_tok_model, task, task.pairs[:6], corrupt=True, seed=3)
    assert torch.equal(clean.attention_mask.sum(1), bad.attention_mask.sum(1))
    assert all(ins.text not in t for ins in task.instructions for t in bad.texts)
    again = instruction_prompts(tiny_tok_model, task, task.pairs[:6], corrupt=True, seed=3)
    assert again.texts == bad.texts


def test_shuffled_labels_move_every_label(tiny_tok_model):
    demos = [Pair(input=f"in{i}", output=f"out{i}") for i in range(12)]
    q = [Pair(input="x", output="y")]
    b = icl_prompts(tiny_tok_model, q, demos, shots=10, seed=2, shuffle_labels=True)
    lines = b.texts[0].split("\n")
    for qline, aline in zip(lines[0::3], lines[1::3]):
        if qline.startswith("Q: in"):
            assert qline[5:] != aline[5:]
    assert b.kind == "icl_shuffled"


def test_select_and_chunks_repad(tiny_tok_model, task):
    b = zero_shot_prompts(tiny_tok_model, task.pairs[:7])
    parts = b.chunks(3)
    assert [len(p) for p in parts] == [3, 3, 1]
    sub = b.select([6])
    assert sub.texts == (b.texts[6],) and sub.attention_mask.all()
    torch.testing.assert_close(last_logits(tiny_tok_model, sub)[0],
                               last_logits(tiny_tok_model, b)[6], atol=1e-5, rtol=0)


def test_template_validation():
    with pytest.raises(ValueError, match="{x}"):
        Template(query="Q: nothing")


def test_too_few_demonstrations(tiny_tok_model):
    with pytest.raises(ValueError, match="at least 11"):
        icl_prompts(tiny_tok_model, [Pair(input="a", output="b")],
                    [Pair(input="c", output="d")], shots=10)


def test_ranks_and_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    assert ranks_of(logits, torch.tensor([1, 1])).tolist() == [0, 2]


def test_evaluate_counts_hits(tiny_tok_model, task):
    b = zero_shot_prompts(tiny_tok_model, task.pairs[:5])
    logits = last_logits(tiny_tok_model, b)
    ev = evaluate(tiny_tok_model, b)
    assert ev.top1 == float((logits.argmax(-1) == b.targets).float().mean())
    assert 0 <= ev.top1 <= ev.top3 <= 1
