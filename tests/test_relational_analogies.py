"""Composite FVs and analogies: item formats, per-row hooks, weight fitting, scoring."""

from __future__ import annotations

import json

import pytest
import torch

from fvlens.evaluation import evaluate
from fvlens.hooks import assert_no_hooks
from fvlens.prompts import zero_shot_prompts
from fvlens.relational.analogies import (CONDITIONS, ITEM_RELATIONS, AnalogyItem, builtin_items,
                                         evaluate_analogies, generate_items, load_items,
                                         score_items)
from fvlens.relational.composite import (CompositeConfig, RelationBank, composite_hooks,
                                         fit_weights, single_vector_logprobs)
from fvlens.steering import FunctionVector
from fvlens.tasks import Pair, task_dir

ATOL = 1e-4  # float32 logits of the same forward pass built two ways


def _bank(model, n=3):
    gen = torch.Generator().manual_seed(0)
    vecs = tuple(FunctionVector(vector=3 * torch.randn(model.cfg.d_model, generator=gen),
                                layer=i % model.cfg.n_layers) for i in range(n))
    return RelationBank(names=("capitalize", "antonym", "present-past")[:n], vectors=vecs)


ITEMS = [
    AnalogyItem(stem=("hot", "cold"), choices=(("big", "small"), ("big", "big"), ("big", "fast")),
                answer=0, relation="antonym"),
    AnalogyItem(stem=("apple", "Apple"), choices=(("table", "house"), ("table", "Table")),
                answer=1, relation="capitalize"),
    AnalogyItem(stem=("dog", "puppy"), choices=(("cat", "kitten"), ("cat", "dog")), answer=0,
                relation="animal-young"),
]


def test_item_validation():
    with pytest.raises(ValueError, match="answer"):
        AnalogyItem(stem=("a", "b"), choices=(("c", "d"),), answer=1)
    with pytest.raises((TypeError, ValueError)):  # jaxtyping checks the field types
        AnalogyItem(stem=("a",), choices=(("c", "d"),), answer=0)


def test_load_items_formats(tmp_path):
    jl = tmp_path / "items.jsonl"
    jl.write_text(json.dumps({"stem": ["a", "b"], "choice": [["c", "d"], ["e", "f"]], "answer": 1})
                  + "\n" + json.dumps({"stem": ["a", "b"], "query": "c", "choice": ["x", "d"],
                                       "answer": 1, "relation": "r"}) + "\n")
    a, b = load_items(jl)
    assert a.query == ("e", "f") and b.choices == (("c", "x"), ("c", "d")) and b.relation == "r"
    cs = tmp_path / "items.csv"
    cs.write_text("A,B,C,D,D_foil\nhot,cold,big,small,tall\nup,down,in,out\n")
    c, d = load_items(cs)
    assert c.choices == (("big", "small"), ("big", "tall")) and c.answer == 0
    assert d.choices == (("in", "out"),)
    with pytest.raises(ValueError, match="jsonl or .csv"):
        (tmp_path / "x.txt").write_text("a")
        load_items(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError, match="analogies.jsonl"):
        load_items(tmp_path / "missing.jsonl")


def test_generate_items_has_valid_foils():
    rel = {"r": [Pair(input=f"x{i}", output=f"y{i}") for i in range(6)],
           "s": [Pair(input=f"u{i}", output=f"v{i}") for i in range(6)]}
    items = generate_items(rel, per_relation=5, seed=1)
    assert items == generate_items(rel, per_relation=5, seed=1)
    for it in items:
        c, d = it.query
        good = {p.output for p in rel[it.relation] if p.input == c}
        assert d in good and it.stem[0] != c
        ds = [x for _, x in it.choices]
        assert len(set(ds)) == len(ds) == 4
        assert sum(x in good for x in ds) == 1


def test_project_items_file():
    items = load_items(task_dir() / "analogies.jsonl")
    assert items == builtin_items()  # the file is what the generator writes
    relations = {it.relation for it in items}
    assert len(items) >= 100 and len(relations) >= 10
    assert relations - set(ITEM_RELATIONS), "needs relations that no built-in task covers"


def test_bank_round_trip_and_errors(tmp_path, tiny_tok_model):
    bank = _bank(tiny_tok_model)
    bank.save(tmp_path / "bank")
    back = RelationBank.load(tmp_path / "bank")
    assert sorted(back.names) == sorted(bank.names)
    i, j = back.index("antonym"), bank.index("antonym")
    assert torch.equal(back.vectors[i].vector, bank.vectors[j].vector)
    assert back.vectors[i].layer == bank.vectors[j].layer
    with pytest.raises(ValueError, match="not in the bank"):
        bank.index("synonym")
    with pytest.raises(ValueError, match="lacks"):
        RelationBank.load(tmp_path / "bank", names=["synonym"])
    with pytest.raises(FileNotFoundError, match="build"):
        RelationBank.load(tmp_path / "nope")


def test_composite_one_hot_equals_the_single_vector(tiny_tok_model):
    model = tiny_tok_model
    bank = _bank(model)
    batch = zero_shot_prompts(model, [Pair(input="hot", output="cold"),
                                      Pair(input="apple", output="Apple")])
    w = torch.zeros(2, 3)
    w[0, 1] = w[1, 2] = 1.0
    from fvlens.evaluation import last_logits

    mixed = last_logits(model, batch, fwd_hooks=composite_hooks(bank, w))
    for row, k in ((0, 1), (1, 2)):
        alone = last_logits(model, batch.select([row]), fwd_hooks=bank.vectors[k].hooks())
        torch.testing.assert_close(mixed[row], alone[0], atol=ATOL, rtol=0)
    lp = single_vector_logprobs(model, bank, batch)
    assert lp.shape == (2, 3) and (lp <= 0).all()
    assert_no_hooks(model)


def test_fit_weights_raises_the_stem_probability(tiny_tok_model):
    model = tiny_tok_model
    bank = _bank(model)
    stems = [Pair(input="hot", output="cold"), Pair(input="walk", output="walked")]
    batch = zero_shot_prompts(model, stems)
    uniform = fit_weights(model, bank, stems, CompositeConfig(steps=0))
    fitted = fit_weights(model, bank, stems, CompositeConfig(steps=15, lr=0.5))
    assert torch.allclose(uniform, torch.full((2, 3), 1 / 3))

    def logp(w):
        from fvlens.evaluation import last_logits

        lg = last_logits(model, batch, fwd_hooks=composite_hooks(bank, w))
        return lg.log_softmax(-1).gather(1, batch.targets[:, None])[:, 0]

    assert (logp(fitted) > logp(uniform)).all()
    assert fitted.shape == (2, 3) and (fitted >= 0).all()
    fixed = fit_weights(model, bank, stems, CompositeConfig(steps=3, affine=False))
    torch.testing.assert_close(fixed.sum(1), torch.ones(2), atol=1e-6, rtol=0)
    assert all(not p.requires_grad or True for p in model.parameters())
    assert_no_hooks(model)


def test_scores_match_a_plain_forward(tiny_tok_model):
    model = tiny_tok_model
    item = ITEMS[0]
    res = score_items(model, [item])
    # multiple choice = argmax over choices of the summed candidate log-probabilities
    totals = []
    for c, d in item.choices:
        prompt = f"Q: {c}\nA:"
        p_ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        d_ids = model.tokenizer(" " + d, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = model(torch.tensor([p_ids + d_ids])).log_softmax(-1)[0]
        totals.append(sum(float(lp[len(p_ids) - 1 + t, d_ids[t]]) for t in range(len(d_ids))))
    assert bool(res["mc"][0]) == (max(range(3), key=totals.__getitem__) == item.answer)


def test_steered_first_token_matches_evaluate(tiny_tok_model):
    model = tiny_tok_model
    bank = _bank(model)
    items = [AnalogyItem(stem=("x", "y"), choices=((p.input, p.output),), answer=0)
             for p in (Pair(input="apple", output="Apple"), Pair(input="walk", output="walked"))]
    w = torch.zeros(2, 3)
    w[:, 2] = 1.0
    gen = score_items(model, items, weights=w, bank=bank)["generative"]
    ev = evaluate(model, zero_shot_prompts(model, [Pair(input=i.query[0], output=i.query[1])
                                                   for i in items]),
                  fwd_hooks=bank.vectors[2].hooks())
    assert gen.tolist() == ev.correct.tolist()


def test_evaluate_analogies_reports_every_condition(tiny_tok_model):
    model = tiny_tok_model
    out = evaluate_analogies(model, ITEMS, _bank(model), cfg=CompositeConfig(steps=2),
                             progress=False)
    assert set(out["accuracy"]) == set(CONDITIONS)
    assert out["accuracy"]["oracle"]["n"] == 2  # animal-young is not in the bank
    assert out["by_group"]["not_in_bank"]["oracle"]["n"] == 0
    assert out["by_group"]["in_bank"]["composite"]["n"] == 2
    for cond in CONDITIONS:
        assert 0.0 <= out["accuracy"][cond]["mc"] <= 1.0
    assert len(out["choices"]["single_best"]) == 3
    assert_no_hooks(model)
    with pytest.raises(ValueError, match="conditions"):
        evaluate_analogies(model, ITEMS, _bank(model), conditions=("magic",), progress=False)
