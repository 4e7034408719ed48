"""The finetune / similarity / analogies subcommands (tiny model patched in) and one slow
behaviour test on the embedded model."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import fvlens.models
from fvlens.hooks import assert_no_hooks
from fvlens.cli.relational import add_parsers
from fvlens.relational.ratings import read_ratings
from fvlens.relational.similarity_study import run_similarity
from fvlens.tasks import load_task


def _parser():
    p = argparse.ArgumentParser(prog="fvlens")
    add_parsers(p.add_subparsers(dest="command", required=True))
    return p


@pytest.fixture
def patched(monkeypatch, tiny_tok_model):
    """The tiny model instead of the embedded one, and stand-in extracted vectors (a random
    tiny model answers no ICL prompt, so it has no mean activation to extract from)."""
    import importlib

    from test_relational_finetune import _fake_vectors

    monkeypatch.setattr(fvlens.models, "load_model", lambda *a, **k: tiny_tok_model)
    for name in ("fvlens.relational.finetune", "fvlens.relational.comparison"):
        monkeypatch.setattr(importlib.import_module(name), "extract_vectors",
                            lambda model, task, **kw: _fake_vectors(model))
    return tiny_tok_model


def _ratings_from_tasks(path, per=8):
    """A ratings file in the Chen et al. format built from built-in task pairs (made-up
    ratings: 6 within a relation, 2 between)."""
    rels = {n: load_task(n).pairs[:per] for n in ("antonym", "capitalize", "present-past")}
    lines = ["relation1,relation2,comparison_type,pair1_word1,pair1_word2,pair2_word1,"
             "pair2_word2,mean_rating,num_ratings"]
    names = sorted(rels)
    for i, a in enumerate(names):
        for b in names[i:]:
            for k in range(per - 1):
                p, q = rels[a][k], rels[b][k + 1]
                kind = "within-subtype" if a == b else "between-type"
                rating = (6.0 if a == b else 2.0) + 0.1 * k
                lines.append(f"{a},{b},{kind},{p.input},{p.output},{q.input},{q.output},"
                             f"{rating},9")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_parsers_registered():
    p = _parser()
    assert p.parse_args(["finetune", "--task", "antonym", "--out", "x"]).init == "aie"
    args = p.parse_args(["similarity", "--ratings", "r.csv", "--out", "x"])
    assert args.pairs == 16 and args.steps == 30 and args.pass_ratio == 0.5
    an = p.parse_args(["analogies", "--bank", "b", "--out", "x"])
    assert an.fit_steps == 20 and an.n_val == 30 and "top_m" in an.conditions


@pytest.mark.parametrize("command", ["finetune", "similarity", "analogies"])
def test_help_shows_the_true_defaults(command):
    """Every option with a default shows it in --help, and the shown value is the parsed one
    (the bank's fine-tuning steps: 30, as docs/relational.md says)."""
    p = _parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    text = " ".join(sub.format_help().split())
    required = {"finetune": ["--task", "T"], "similarity": ["--ratings", "R"],
                "analogies": ["--bank", "B"]}[command]
    parsed = vars(p.parse_args([command, *required, "--out", "o"]))
    for action in sub._actions:
        if (action.option_strings and not action.required and action.help
                and "default" not in action.help
                and all(action.default is not v for v in (None, False, argparse.SUPPRESS))):
            assert f"(default:{parsed[action.dest]})" in text.replace(" ", ""), action.dest
    steps = {"finetune": 60, "similarity": 30, "analogies": 30}[command]
    assert parsed["steps"] == steps and f"Adam steps (default: {steps})" in text


def test_cli_finetune_writes_results_and_vectors(patched, tmp_path):
    args = _parser().parse_args(
        ["finetune", "--task", "capitalize", "--init", "zeros", "--steps", "3", "--pairs", "6",
         "--batch-size", "3", "--n-test", "6", "--shots", "2", "--k", "3", "--lr", "0.05",
         "--out", str(tmp_path / "ft")])
    assert args.func(args) == 0
    res = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert set(res["held_out_top1"]) >= {"zero_shot", "icl", "extracted", "finetuned",
                                         "random_init", "finetuned_dfv", "extracted_dfv"}
    assert res["runs"]["finetuned"]["init"] == "zeros"
    assert "capitalize" in res["relation_words"]["finetuned"] or res["relation_words"]
    assert (tmp_path / "ft" / "capitalize.safetensors").is_file()
    assert (tmp_path / "ft" / "runs" / "capitalize.random_init.safetensors").is_file()
    assert_no_hooks(patched)


def test_cli_analogies_builds_a_bank_and_reports_every_variant(patched, tmp_path, capsys):
    items = tmp_path / "items.csv"
    items.write_text("A,B,C,D,D_foil\nhot,cold,big,small,tall\nwalk,walked,jump,jumped,jump\n"
                     "up,down,in,out,up\ngo,went,see,saw,see\n")
    args = _parser().parse_args(
        ["analogies", "--items", str(items), "--bank", str(tmp_path / "bank"),
         "--build-bank", "antonym,present-past", "--layer", "1", "--candidates", "1,2",
         "--steps", "2", "--pairs", "4", "--n-val", "4", "--batch-size", "2", "--lr", "0.05",
         "--fit-steps", "2", "--n-boot", "20", "--val-fraction", "0.5",
         "--out", str(tmp_path / "an")])
    assert args.func(args) == 0
    res = json.loads((tmp_path / "an" / "results.json").read_text())
    assert res["quality"]["n"] == 2 and len(res["quality"]["rows"]) == 2
    label = "all" if "all" in res["banks"] else "passing"
    bank_res = res["banks"][label]
    if "skipped" not in bank_res:
        assert set(bank_res["test"]) == {"none", "icl", "single_best", "oracle", "softmax",
                                         "affine", "similarity", "top_m"}
        assert bank_res["composite"]["variant"] in ("softmax", "affine", "similarity", "top_m")
    out = capsys.readouterr().out
    assert "relation vectors pass" in out
    args = _parser().parse_args(["analogies", "--items", str(items), "--bank",
                                 str(tmp_path / "empty"), "--out", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError, match="build-bank"):
        args.func(args)


def test_cli_similarity_writes_json_and_html(patched, tmp_path, capsys):
    ratings = _ratings_from_tasks(tmp_path / "r.csv")
    args = _parser().parse_args(
        ["similarity", "--ratings", str(ratings), "--layer", "1", "--candidates", "1",
         "--steps", "2", "--pairs", "3", "--batch-size", "3", "--lr", "0.05", "--icl-shots", "1",
         "--n-perm", "20", "--n-boot", "20", "--pass-ratio", "0", "--out", str(tmp_path / "sim")])
    assert args.func(args) == 0
    res = json.loads((tmp_path / "sim" / "results.json").read_text())
    assert set(res["relation_level"]) == {"icl_mean", "unembed_diff", "random", "finetuned"}
    assert set(res["pair_level"]) == {"resid", "unembed_diff", "random"}
    assert res["relation_level"]["finetuned"]["n"] == 3
    q = res["quality"]
    assert q["n"] == 3 and q["ratio"] == 0 and len(q["rows"]) == 3
    assert all(set(r) >= {"val_top1", "icl_top1", "passes", "reason"} for r in q["rows"])
    assert (tmp_path / "sim" / "pair_level_scatter.html").is_file()
    assert (tmp_path / "sim" / "relation_level_scatter.html").is_file()
    out = capsys.readouterr().out
    assert f"{q['n_pass']} of 3 relation vectors pass" in out
    if q["n_pass"] == 3:  # every vector passes: the passing level is the full one
        sp = res["relation_level_passing"]["finetuned"]["spearman"]
        assert "Spearman on the 3 passing relation vectors" in out
        lo, hi = sp["ci95"]
        assert f"[{lo:+.2f}, {hi:+.2f}]" in out
    # every pass rule on the same vectors: the chosen one is the main result, top-5 counts
    # the vectors whose first-token top-5 is above zero (ratio 0)
    by = res["by_metric"]
    assert set(by) == {"top1", "top5"} and by["top1"]["n_pass"] == q["n_pass"]
    assert by["top5"]["n_pass"] == sum(r["val_top5"] > 0 for r in q["rows"])
    assert set(by["top5"]["passing"]) >= set(q["passing"])  # top-1 > 0 implies top-5 > 0
    assert f"under the top5 rule: {by['top5']['n_pass']} of 3 pass" in out
    lines = [ln for ln in out.splitlines() if "_level" in ln]
    assert all("spearman" in ln and "pearson" in ln for ln in lines)
    assert sum(" relation_level " in ln for ln in lines) == 4


def test_run_similarity_subsets_are_seeded(tiny_tok_model, tmp_path):
    rows = read_ratings(_ratings_from_tasks(tmp_path / "r.csv"))
    a, _ = run_similarity(tiny_tok_model, rows, layer=1, max_rows=10, icl_shots=1, n_perm=10,
                          n_boot=10, progress=False)
    b, _ = run_similarity(tiny_tok_model, rows, layer=1, max_rows=10, icl_shots=1, n_perm=10,
                          n_boot=10, progress=False)
    assert json.dumps(a) == json.dumps(b)  # NaN-safe equality
    assert a["n_pair_rows"] == 10 and "finetuned" not in a["relation_level"]


@pytest.mark.slow
def test_finetuned_fv_beats_zero_shot_on_the_embedded_model(smollm):
    """Zeros-init FV at layer 10 (no head scoring), 12 steps: held-out top-1 rises clearly."""
    from fvlens.evaluation import evaluate
    from fvlens.prompts import zero_shot_prompts
    from fvlens.relational.finetune import FinetuneConfig, finetune, split_pairs

    torch.manual_seed(0)
    cfg = FinetuneConfig(init="zeros", layer=10, steps=12, pairs=12, batch_size=12,
                         val_fraction=0.5, n_test=20)
    before = {k: v.clone() for k, v in smollm.state_dict().items() if k.endswith("W_O")}
    res = finetune(smollm, "capitalize", cfg, progress=False)
    _, _, test_q = split_pairs(load_task("capitalize"), cfg)
    zs = zero_shot_prompts(smollm, test_q)
    base = evaluate(smollm, zs).top1
    tuned = evaluate(smollm, zs, fwd_hooks=res.vector.hooks()).top1
    assert tuned >= base + 0.3, (base, tuned)
    for k, v in before.items():
        assert torch.equal(smollm.state_dict()[k], v)
    assert_no_hooks(smollm)
