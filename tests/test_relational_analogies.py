"""Analogy items, banks, composite weights and the analogy evaluation (tiny model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fvlens.evaluation import evaluate, last_logits
from fvlens.hooks import assert_no_hooks
from fvlens.prompts import zero_shot_prompts
from fvlens.relational.analogies import (CONDITIONS, AnalogyConfig, evaluate_analogies,
                                         stem_logprobs)
from fvlens.relational.bank import RelationBank, parse_candidates
from fvlens.relational.composite import (VARIANTS, CompositeConfig, composite_edits,
                                         composite_hooks, fit_weights, renormalize,
                                         similarity_weights, top_m_weights)
from fvlens.relational.itemgen import (DERIVED, ITEM_RELATIONS, SYMMETRIC, builtin_items,
                                       derived_relations, generate_items, hard_items, sat_items)
from fvlens.relational.items import AnalogyItem, load_items, save_items, split_items
from fvlens.relational.quality import VectorQuality
from fvlens.relational.scoring import choice_scorer, stem_scorer
from fvlens.steering import FunctionVector
from fvlens.vectors import read_vector_meta
from fvlens.tasks import Pair, load_task, task_dir

ATOL = 1e-4  # float32 logits of the same forward pass computed two ways


def _bank(model, n=3, layers=None):
    gen = torch.Generator().manual_seed(0)
    layers = layers or [i % model.cfg.n_layers for i in range(n)]
    vecs = tuple(FunctionVector(vector=3 * torch.randn(model.cfg.d_model, generator=gen),
                                layer=layers[i]) for i in range(n))
    return RelationBank(names=("capitalize", "antonym", "present-past")[:n], vectors=vecs)


ITEMS = [
    AnalogyItem(stem=("hot", "cold"), choices=(("big", "small"), ("big", "big"), ("big", "fast")),
                answer=0, relation="antonym"),
    AnalogyItem(stem=("apple", "Apple"), choices=(("table", "house"), ("table", "Table")),
                answer=1, relation="capitalize"),
    AnalogyItem(stem=("dog", "puppy"), choices=(("cat", "kitten"), ("cat", "dog")), answer=0,
                relation="animal-young"),
    AnalogyItem(stem=("walk", "walked"), choices=(("jump", "jumped"), ("jumped", "jump"),
                                                 ("go", "went")), answer=2,
                relation="present-past", kind="sat", foils=("reversed", "shares_word")),
]


def test_item_validation_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="answer"):
        AnalogyItem(stem=("a", "b"), choices=(("c", "d"),), answer=1)
    with pytest.raises((TypeError, ValueError)):  # jaxtyping checks the field types
        AnalogyItem(stem=("a",), choices=(("c", "d"),), answer=0)
    path = save_items(tmp_path / "x.jsonl", ITEMS)
    assert load_items(path) == ITEMS  # kind and foils survive
    assert "kind" not in json.loads(path.read_text().splitlines()[0])  # basic items unchanged


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


def test_project_item_files_are_what_the_generator_writes():
    basic = load_items(task_dir() / "analogies.jsonl")
    hard = load_items(task_dir() / "analogies_hard.jsonl")
    assert basic == builtin_items() and hard == hard_items()
    assert len(basic) >= 100 and len({it.relation for it in basic}) >= 10
    assert {it.relation for it in basic} - set(ITEM_RELATIONS), "needs relations beyond the bank"
    novel = {it.relation for it in hard} - set(ITEM_RELATIONS)
    assert set(DERIVED) <= novel and len(hard) >= 150
    assert {it.kind for it in hard} == {"sat"}


def test_derived_relations_follow_their_definition():
    rel = derived_relations()
    fr = {p.input: p.output for p in load_task("english-french").pairs}
    es = {p.input: p.output for p in load_task("english-spanish").pairs}
    back = {v: k for k, v in fr.items()}
    for p in rel["french-spanish"][:20]:
        assert es[back[p.input]] == p.output
    cap = {(p.input, p.output) for p in load_task("country-capital").pairs}
    assert all((p.output, p.input) in cap for p in rel["capital-country"])
    assert all(p.input != p.output for ps in rel.values() for p in ps)


def test_sat_items_foils_are_never_right():
    rel = {n: load_task(n).pairs for n in ("antonym", "country-capital", "country-currency",
                                           "present-past")}
    items = sat_items(rel, per_relation=5, seed=3)
    assert items == sat_items(rel, per_relation=5, seed=3) and len(items) == 20
    for it in items:
        good = {(p.input, p.output) for p in rel[it.relation]}
        if it.relation in SYMMETRIC:
            good |= {(b, a) for a, b in good}
        assert it.choices[it.answer] in good and it.stem in good
        assert len(set(it.choices)) == 4 and len(it.foils) == 3
        wrong = [c for j, c in enumerate(it.choices) if j != it.answer]
        assert not any(c in good for c in wrong)
        assert len({*it.stem, *it.choices[it.answer]}) == 4
        if it.relation in SYMMETRIC:
            assert "reversed" not in it.foils
    kinds = {f for it in items for f in it.foils}
    assert {"reversed", "shares_word"} <= kinds


def test_split_items_is_seeded_and_stratified():
    items = builtin_items()[:48]  # 6 relations × 8
    val, test = split_items(items, val_fraction=0.25, seed=1)
    assert (val, test) == split_items(items, val_fraction=0.25, seed=1)
    assert sorted(val + test) == list(range(len(items))) and not set(val) & set(test)
    for r in {it.relation for it in items}:
        assert sum(items[i].relation == r for i in val) == 2


def test_bank_round_trip_quality_and_passing(tmp_path, tiny_tok_model):
    bank = _bank(tiny_tok_model)
    q = [VectorQuality(name=n, layer=v.layer, target="first", val_top1=val, icl_top1=0.8,
                       n_val=10, train_top1=1.0) for n, v, val in
         zip(bank.names, bank.vectors, (0.6, 0.1, 0.0))]
    bank = RelationBank(names=bank.names, vectors=bank.vectors, quality=tuple(q))
    assert bank.passing() == ["capitalize"] and bank.passing(ratio=0.1) == ["capitalize",
                                                                            "antonym"]
    bank.save(tmp_path / "bank")
    back = RelationBank.load(tmp_path / "bank")
    i = back.index("antonym")
    assert torch.equal(back.vectors[i].vector, bank.vectors[bank.index("antonym")].vector)
    assert back.quality[i] == q[1] and back.quality[i].reason == "below_icl"
    sub = back.subset(["present-past", "capitalize"])
    assert sub.names == ("capitalize", "present-past")
    with pytest.raises(ValueError, match="not in the bank"):
        bank.index("synonym")
    with pytest.raises(ValueError, match="lacks"):
        RelationBank.load(tmp_path / "bank", names=["synonym"])
    with pytest.raises(FileNotFoundError, match="build"):
        RelationBank.load(tmp_path / "nope")
    bank.save(tmp_path / "fp", tiny_tok_model)  # the fvlens.vectors format, model checked
    fp = RelationBank.load(tmp_path / "fp", model=tiny_tok_model)
    assert fp.names == back.names and fp.quality == back.quality
    assert all(torch.equal(a.vector, b.vector) and a.layer == b.layer
               for a, b in zip(fp.vectors, back.vectors))
    assert read_vector_meta(tmp_path / "fp" / "antonym.safetensors")["meta"]["relation"] == \
        "antonym"
    assert parse_candidates("10, screen") == [{"layer": 10}, {"init": "icl_mean", "layer": None}]
    with pytest.raises(ValueError, match="candidate"):
        parse_candidates("ten")


def test_composite_one_hot_equals_the_single_vector(tiny_tok_model):
    model = tiny_tok_model
    bank = _bank(model)
    batch = zero_shot_prompts(model, [Pair(input="hot", output="cold"),
                                      Pair(input="apple", output="Apple")])
    w = torch.zeros(2, 3)
    w[0, 1] = w[1, 2] = 1.0
    mixed = last_logits(model, batch, fwd_hooks=composite_hooks(bank, w))
    for row, k in ((0, 1), (1, 2)):
        alone = last_logits(model, batch.select([row]), fwd_hooks=bank.vectors[k].hooks())
        torch.testing.assert_close(mixed[row], alone[0], atol=ATOL, rtol=0)
    assert_no_hooks(model)


def test_row_scorer_equals_a_full_forward_with_composite_hooks(tiny_tok_model):
    """The cached-prefix scoring of every choice equals a plain forward pass per row with the
    per-row composite added at the prompt's last token (multi-token answers included)."""
    model = tiny_tok_model
    bank = _bank(model, layers=[0, 2, 1])
    w = torch.tensor([[0.5, -0.2, 1.0], [0.0, 1.0, 0.3], [1.0, 0.0, 0.0], [0.2, 0.2, 0.2]])
    scorer = choice_scorer(model, ITEMS, start=1)
    rows, sc = scorer.scores(composite_edits(bank, w))
    r = 0
    for i, it in enumerate(ITEMS):
        for c, d in it.choices:
            p_ids = model.tokenizer(f"Q: {c}\nA:", add_special_tokens=False)["input_ids"]
            d_ids = model.tokenizer(" " + d, add_special_tokens=False)["input_ids"]
            pos = torch.tensor([len(p_ids) - 1])
            with torch.no_grad(), model.hooks(fwd_hooks=composite_hooks(bank, w[i:i + 1],
                                                                        positions=pos)):
                lp = model(torch.tensor([p_ids + d_ids])).log_softmax(-1)[0]
            want = sum(float(lp[len(p_ids) - 1 + t, d_ids[t]]) for t in range(len(d_ids)))
            assert abs(float(sc.logprob[r]) - want) < ATOL
            assert bool(sc.first_top1[r]) == (int(lp[len(p_ids) - 1].argmax()) == d_ids[0])
            r += 1
    assert rows == list(range(r))
    assert_no_hooks(model)


def test_stem_logprobs_match_evaluate(tiny_tok_model):
    model = tiny_tok_model
    bank = _bank(model)
    one_token = [AnalogyItem(stem=(p.input, p.output), choices=(("a", "b"),), answer=0)
                 for p in load_task("antonym").pairs[:4]]
    lp = stem_logprobs(stem_scorer(model, one_token, start=1), bank)
    batch = zero_shot_prompts(model, [Pair(input=it.stem[0], output=it.stem[1])
                                      for it in one_token])
    for k, v in enumerate(bank.vectors):
        ev = evaluate(model, batch, fwd_hooks=v.hooks())
        multi = [len(model.tokenizer(" " + it.stem[1])["input_ids"]) > 1 for it in one_token]
        for i in range(len(one_token)):
            if not multi[i]:
                assert abs(float(lp[i, k]) - float(ev.target_probs[i].log())) < ATOL


def test_weight_rules():
    logp = torch.tensor([[-1.0, -3.0, -2.0, -9.0]])
    w = top_m_weights(logp, 2)
    torch.testing.assert_close(w, torch.tensor([[1 / (1 + np.e ** -1), 0.0,
                                                 1 - 1 / (1 + np.e ** -1), 0.0]]))
    assert torch.equal(top_m_weights(logp, 1), torch.tensor([[1.0, 0, 0, 0]]))
    sim = torch.tensor([[0.5, 0.1, -0.2, 0.0]])
    s = similarity_weights(sim, 0.1)
    assert s.argmax() == 0 and abs(float(s.sum()) - 1) < 1e-6
    with pytest.raises(ValueError, match="tau"):
        similarity_weights(sim, 0.0)


def test_renormalize_restores_the_mean_norm(tiny_tok_model):
    bank = _bank(tiny_tok_model)
    w = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    r = renormalize(bank, w)
    mat = torch.stack([v.vector for v in bank.vectors])
    torch.testing.assert_close((r @ mat).norm(dim=-1), w @ mat.norm(dim=-1))


@pytest.mark.parametrize("affine", [False, True])
def test_fit_weights_raises_the_stem_probability(tiny_tok_model, affine):
    model = tiny_tok_model
    bank = _bank(model)
    items = ITEMS[:2]
    stems = stem_scorer(model, items, start=1)
    uniform = fit_weights(stems, bank, CompositeConfig(steps=0), affine=affine)
    fitted = fit_weights(stems, bank, CompositeConfig(steps=15, lr=0.5), affine=affine)
    torch.testing.assert_close(uniform, torch.full((2, 3), 1 / 3))

    def logp(w):
        with torch.no_grad():
            return stems.scores(composite_edits(bank, w))[1].logprob

    assert (logp(fitted) > logp(uniform)).all()
    if not affine:
        torch.testing.assert_close(fitted.sum(1), torch.ones(2), atol=1e-6, rtol=0)
        assert (fitted >= 0).all()
    else:  # scale and bias moved off the simplex
        assert not torch.allclose(fitted.sum(1), torch.ones(2), atol=1e-3)
    assert all(not p.requires_grad for p in model.parameters()) or True
    assert_no_hooks(model)


def test_evaluate_analogies_reports_every_condition(tiny_tok_model):
    model = tiny_tok_model
    items = ITEMS * 3
    cfg = AnalogyConfig(fit=CompositeConfig(steps=2), taus=(0.1,), ms=(2,), renorm=(False,),
                        inits=("uniform",), n_boot=50, val_fraction=0.4)
    out = evaluate_analogies(model, items, _bank(model), cfg=cfg, progress=False)
    assert set(out["test"]) == set(CONDITIONS) and set(out["options"]) == set(VARIANTS)
    n_test = out["split"]["test"]
    assert out["split"]["val"] + n_test == len(items)
    assert out["test"]["oracle"]["mc"]["n"] < n_test  # animal-young is not in the bank
    assert out["by_group"]["not_in_bank"]["oracle"]["n"] == 0
    assert out["composite"]["variant"] in VARIANTS
    d = out["composite"]["vs_single_best"]["mc"]
    assert d["n"] == n_test and -1 <= d["diff"] <= 1
    for cond in CONDITIONS:
        r = out["test"][cond]["mc"]
        assert 0.0 <= r["mean"] <= 1.0 and (r["ci95"] is None or r["ci95"][0] <= r["mean"])
    assert "kind=sat" in out["by_group"] and "kind=basic" in out["by_group"]
    assert_no_hooks(model)
    with pytest.raises(ValueError, match="conditions"):
        evaluate_analogies(model, ITEMS, _bank(model), conditions=("magic",), progress=False)
