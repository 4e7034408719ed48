"""The reliability battery: bad inputs give one clean error (with the fix) before any work,
and nothing is lost or left behind when a run goes wrong. The list is in docs/reliability.md.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import fvlens.models
from fvlens.cli import main
from fvlens.evaluation import evaluate, evaluation_from_logits
from fvlens.forward import forward_last
from fvlens.hooks import assert_no_hooks
from fvlens.prompts import zero_shot_prompts
from fvlens.provenance import write_results
from fvlens.tasks import load_task


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command loads a model: its checks must come first."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(fvlens.models, "load_model", refuse)


@pytest.fixture
def tiny_cli_model(monkeypatch, tiny_tok_model):
    monkeypatch.setattr(fvlens.models, "load_model", lambda *a, **k: tiny_tok_model)
    return tiny_tok_model


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# --- options and outputs, before the model loads ----------------------------------------


def test_out_that_is_a_file(no_model, tmp_path, capsys):
    f = tmp_path / "results.txt"
    f.write_text("x")
    assert main(["run", "--tasks", "capitalize", "--out", str(f)]) == 2
    err = _error(capsys)
    assert "fvlens: error: --out" in err and "is a file" in err


def test_out_that_cannot_be_created(no_model, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", "--tasks", "capitalize", "--out", str(blocker / "sub")]) == 2
    assert "not a writable directory" in _error(capsys)


@pytest.mark.parametrize("argv,message", [
    (["run", "--tasks", ""], "tasks is empty"),
    (["run", "--tasks", " , "], "tasks is empty"),
    (["run", "--tasks", "no-such-task"], "unknown task"),
    (["run", "--select", "magic"], "unknown selection"),
    (["run", "--shots", "0"], "shots must be ≥ 1 in ICL mode"),
    (["baseline", "--tasks", ""], "--tasks is empty"),
])
def test_bad_run_settings(no_model, tmp_path, capsys, argv, message):
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    assert message in _error(capsys)


@pytest.mark.parametrize("argv,message", [
    (["run", "--k", "0"], "must be ≥ 1"),
    (["run", "--k-sweep", "abc"], "comma-separated integers"),
    (["run", "--k-sweep", "5,-1"], "≥ 1"),
    (["run", "--samples", "x"], "expected an integer"),
])
def test_bad_numbers_are_argparse_errors(no_model, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_k_beyond_the_model_is_refused_before_scoring(tiny_cli_model, tmp_path, capsys,
                                                     monkeypatch):
    import fvlens.plan

    monkeypatch.setattr(fvlens.plan, "prepare_task",
                        lambda *a, **k: pytest.fail("work started before k was checked"))
    total = tiny_cli_model.cfg.n_layers * tiny_cli_model.cfg.n_heads
    for argv in (["--k", "100000"], ["--k-sweep", "5,100000"]):
        assert main(["run", "--tasks", "antonym", *argv, "--out", str(tmp_path / "o")]) == 2
        assert f"choose k in [1, {total}]" in _error(capsys)


def test_a_run_whose_tasks_are_all_skipped_fails(tiny_cli_model, tmp_path, capsys):
    # a random tiny model answers no ICL prompt: every task is skipped, with its reason
    out = tmp_path / "o"
    assert main(["run", "--tasks", "antonym", "--k", "4", "--shots", "2", "--samples", "2",
                 "--n-test", "4", "--out", str(out)]) == 1
    err = _error(capsys)
    assert "every task was skipped" in err and "antonym" in err
    res = json.loads((out / "results.json").read_text())
    assert "answers none" in res["tasks"]["antonym"]["skipped"]
    assert_no_hooks(tiny_cli_model)


# --- results files ----------------------------------------------------------------------


def test_results_are_valid_json_with_nan_and_inf(tmp_path):
    path = write_results(tmp_path, {"a": math.nan, "b": [1.0, math.inf], "c": {"d": -math.inf},
                                    "e": (0.5, "x")})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None], "c": {"d": None},
                                            "e": [0.5, "x"]}


# --- library inputs ---------------------------------------------------------------------


def test_prompt_longer_than_the_context(tiny_tok_model):
    n_ctx = tiny_tok_model.cfg.n_ctx
    tokens = torch.ones(1, n_ctx + 1, dtype=torch.long)
    with pytest.raises(ValueError, match=f"{n_ctx + 1} tokens exceeds the model's context of "
                                         f"{n_ctx}"):
        forward_last(tiny_tok_model, tokens)


def test_unknown_hook_name_in_evaluate(tiny_tok_model):
    batch = zero_shot_prompts(tiny_tok_model, load_task("antonym").pairs[:2])
    with pytest.raises(ValueError, match="unknown hook point 'blocks.0.hook_resid_psot'.*close"):
        evaluate(tiny_tok_model, batch, fwd_hooks=[("blocks.0.hook_resid_psot", lambda x, h: x)])
    assert_no_hooks(tiny_tok_model)


def test_target_outside_the_vocabulary():
    with pytest.raises(ValueError, match=r"target ids must be in \[0, 5\)"):
        evaluation_from_logits(torch.zeros(2, 5), torch.tensor([1, 7]))


# --- long runs keep what is done ---------------------------------------------------------


def _finished_run(model, tmp_path, **cfg_fields):
    from fvlens.pipeline import run_settings
    from fvlens.plan import RunConfig
    from fvlens.results import Accuracy, RunResult, Steered, TaskResult

    cfg = RunConfig(tasks=("antonym",), k=4, shots=2, n_samples=2, n_test=4, **cfg_fields)
    done = TaskResult(n_test=4, n=3, baselines={"zero_shot": Accuracy(top1=0.0, n=3)},
                      steered={"aie": {"fv": Steered(accuracy=Accuracy(top1=2 / 3, n=3),
                                                     layer=1)}})
    previous = RunResult(model="smollm2-135m", settings=run_settings(model, cfg),
                         tasks={"antonym": done})
    out = tmp_path / "o"
    write_results(out, previous.to_json())
    return out


def test_resume_keeps_finished_tasks(tiny_cli_model, tmp_path, monkeypatch, capsys):
    import fvlens.pipeline

    out = _finished_run(tiny_cli_model, tmp_path)
    monkeypatch.setattr(fvlens.pipeline, "prepare_task",
                        lambda *a, **k: pytest.fail("a finished task was run again"))
    assert main(["run", "--tasks", "antonym", "--k", "4", "--shots", "2", "--samples", "2",
                 "--n-test", "4", "--out", str(out), "--resume"]) == 0
    assert "1 finished task(s) kept" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["tasks"]["antonym"]["steered"]["aie"]["fv"]["top1"] == pytest.approx(2 / 3)


def test_resume_refuses_other_settings(tiny_cli_model, tmp_path, capsys):
    out = _finished_run(tiny_cli_model, tmp_path)
    assert main(["run", "--tasks", "antonym", "--k", "5", "--shots", "2", "--samples", "2",
                 "--n-test", "4", "--out", str(out), "--resume"]) == 2
    assert "different: k" in _error(capsys)


# --- memory: batch sizes from a token budget, halved on out-of-memory ---------------------


def test_chunks_are_halved_on_out_of_memory(tiny_tok_model):
    from fvlens.forward import map_chunks

    batch = zero_shot_prompts(tiny_tok_model, load_task("antonym").pairs[:10])
    sizes = []

    def fn(chunk):
        sizes.append(len(chunk))
        if len(chunk) > 3:
            raise torch.OutOfMemoryError("simulated")
        return len(chunk)

    assert sum(map_chunks(batch, fn, batch_size=8)) == 10
    assert sizes[:3] == [8, 4, 2] and all(s <= 3 for s in sizes[2:])


def test_token_budget_on_a_gpu_follows_free_memory(tiny_tok_model, monkeypatch):
    from fvlens.batch import TOKENS_PER_PASS, auto_batch_size
    from fvlens.forward import token_budget

    assert token_budget(tiny_tok_model) == TOKENS_PER_PASS  # CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (8 << 30, 16 << 30))
    monkeypatch.setattr(tiny_tok_model.cfg, "device", "cuda")
    big = token_budget(tiny_tok_model)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1 << 20, 16 << 30))
    assert token_budget(tiny_tok_model) == TOKENS_PER_PASS  # never below the CPU budget
    assert big == 1 << 17  # capped: a tiny model on 8 GiB free
    batch = zero_shot_prompts(tiny_tok_model, load_task("antonym").pairs[:4])
    width = batch.tokens.shape[1]
    assert auto_batch_size(batch, None) == max(4, min(64, TOKENS_PER_PASS // width))
    assert auto_batch_size(batch, None, tokens_per_pass=big) == min(1024, big // width)


# --- token inputs in every shape a user has ----------------------------------------------


def test_explain_takes_text_1d_and_1_by_pos(tiny_tok_model):
    from fvlens.attnlrp import explain, explain_batch

    model = tiny_tok_model
    tokens = model.to_tokens("Q: cold\nA:", prepend_bos=False)           # [1, pos]
    a = explain(model, tokens, " hot")
    b = explain(model, tokens[0], " hot")                                # [pos]
    c = explain(model, "Q: cold\nA:", " hot", prepend_bos=False)        # text
    for r in (b, c):
        torch.testing.assert_close(r.tokens, a.tokens, atol=0, rtol=0)
        torch.testing.assert_close(r.heads, a.heads, atol=0, rtol=0)
    with pytest.raises(ValueError, match="explain_batch"):
        explain(model, tokens.repeat(2, 1), " hot")
    with pytest.raises((ValueError, TypeError)):  # jaxtyping's dtype check, else the message
        explain(model, tokens.float(), " hot")
    with pytest.raises((ValueError, TypeError)):  # jaxtyping's shape check, else the message
        explain_batch(model, tokens[0], torch.tensor([3]))
    with pytest.raises(ValueError, match="prompt is empty"):
        explain(model, "", " hot", prepend_bos=False)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        explain(model, tokens, model.cfg.d_vocab + 5)
    assert_no_hooks(model)


def test_explain_warns_on_a_multi_token_target(tiny_tok_model):
    from fvlens.attnlrp import explain

    word = " extraordinarily"
    assert len(tiny_tok_model.to_tokens(word, prepend_bos=False)[0]) > 1
    with pytest.warns(UserWarning, match="only the first"):
        explain(tiny_tok_model, "Q: a\nA:", word, prepend_bos=False)


@pytest.mark.slow
def test_explain_with_to_tokens_on_the_embedded_model(smollm):
    from fvlens.attnlrp import explain

    prompt = "Q: play\nA: played\n\nQ: walk\nA:"
    tokens = smollm.to_tokens(prompt, prepend_bos=False)     # the natural [1, pos] tensor
    a, b = explain(smollm, tokens, " walked"), explain(smollm, tokens[0], " walked")
    torch.testing.assert_close(a.tokens, b.tokens, atol=0, rtol=0)
    torch.testing.assert_close(a.attention, b.attention, atol=0, rtol=0)
