"""Relation-similarity analyses: ratings reader, statistics, relation and pair levels."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fvlens.hooks import assert_no_hooks
from fvlens.relational.ratings import correlate, read_ratings, relation_pairs
from fvlens.relational.similarity import (icl_mean_vectors, pair_level, pair_representations,
                                          random_vectors, relation_level, scatter,
                                          unembed_difference)
from fvlens.tasks import Pair

HEADER = ("relation1,relation2,comparison_type,pair1_word1,pair1_word2,pair2_word1,pair2_word2,"
          "mean_rating,num_ratings\n")
# Made-up rows in the file's format (the real ratings are never copied into the repository).
ROWS = [
    ("r1", "r1", "within-subtype", "hot", "cold", "up", "down", 6.0),
    ("r1", "r2", "between-subtype", "hot", "cold", "walk", "walked", 2.0),
    ("r1", "r3", "between-type", "up", "down", "dog", "puppy", 1.0),
    ("r2", "r3", "between-type", "walk", "walked", "cat", "kitten", 3.0),
    ("r2", "r2", "within-subtype", "walk", "walked", "jump", "jumped", 5.5),
    ("r3", "r3", "within-subtype", "dog", "puppy", "cat", "kitten", 5.0),
    ("r1", "r2", "between-subtype", "up", "down", "jump", "jumped", 2.5),
]


@pytest.fixture
def ratings_csv(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text(HEADER + "".join(",".join(map(str, r)) + ",10\n" for r in ROWS))
    return path


def test_read_ratings(ratings_csv, tmp_path):
    rows = read_ratings(ratings_csv)
    assert len(rows) == len(ROWS) and rows[0].pair1 == ("hot", "cold")
    assert rows[1].mean_rating == 2.0 and rows[1].num_ratings == 10
    rel = relation_pairs(rows)
    assert list(rel) == ["r1", "r2", "r3"]
    assert rel["r1"] == [Pair(input="hot", output="cold"), Pair(input="up", output="down")]
    bad = tmp_path / "bad.csv"
    bad.write_text("relation1,relation2\nr1,r2\n")
    with pytest.raises(ValueError, match="lacks columns"):
        read_ratings(bad)


def test_correlate_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    out = correlate(x, 2 * x + 1, n_perm=200, n_boot=200)
    assert out["spearman"]["r"] == pytest.approx(1.0) and out["pearson"]["r"] == pytest.approx(1.0)
    assert out["spearman"]["p_perm"] == pytest.approx(1 / 201)
    lo, hi = out["pearson"]["ci95"]
    assert lo <= 1.0 <= hi + 1e-9
    noise = correlate(x, rng.normal(size=40), n_perm=200, n_boot=200)
    assert noise["spearman"]["p_perm"] > 0.05
    assert correlate(x, 2 * x, seed=3, n_perm=50, n_boot=50) == \
        correlate(x, 2 * x, seed=3, n_perm=50, n_boot=50)
    with pytest.raises(ValueError, match="equal-length"):
        correlate(x, x[:5])


def test_relation_level_recovers_a_planted_structure():
    names = ["a", "b", "c", "d"]
    # orthogonal-ish vectors with chosen overlaps: cos(a,b) high, cos(c,d) mid, others ~0
    v = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.44, 0, 0], [0, 0, 1.0, 0], [0, 0, 0.6, 0.8]])
    from fvlens.relational.ratings import Rating

    def row(r1, r2, rating):
        return Rating(relation1=r1, relation2=r2, comparison_type="between-subtype",
                      pair1=("x", "y"), pair2=("u", "w"), mean_rating=rating)

    rows = [row("a", "b", 6.0), row("c", "d", 4.0), row("a", "c", 1.0), row("b", "d", 1.5),
            row("a", "d", 0.5), row("a", "a", 7.0)]
    out = relation_level(rows, names, v, n_perm=100, n_boot=100)
    assert out["n"] == 5  # the diagonal row is left out
    assert out["spearman"]["r"] > 0.8
    assert {tuple(i["relations"]) for i in out["items"]} >= {("a", "b"), ("c", "d")}
    with pytest.raises(ValueError, match="include more relations"):
        relation_level(rows[:1], names, v)


def test_pair_level_per_type(ratings_csv):
    rows = read_ratings(ratings_csv)
    pairs = [p for ps in relation_pairs(rows).values() for p in ps]
    vecs = random_vectors(len(pairs), 8, seed=1)
    out = pair_level(rows, pairs, vecs, n_perm=50, n_boot=50)
    assert set(out) >= {"all", "within-subtype", "between-subtype", "between-type", "cosine"}
    assert out["all"]["n"] == len(rows) and len(out["cosine"]) == len(rows)
    with pytest.raises(ValueError, match="no vector"):
        pair_level(rows, pairs[:2], vecs[:2])
    fig = scatter(rows, out["cosine"], title="t")
    assert len(fig.data) == 3


def test_representations_on_the_tiny_model(tiny_tok_model, ratings_csv):
    model = tiny_tok_model
    rel = relation_pairs(read_ratings(ratings_csv))
    pairs = [p for ps in rel.values() for p in ps]
    reps = pair_representations(model, pairs, layer=1)
    assert reps.shape == (len(pairs), model.cfg.d_model)
    torch.testing.assert_close(reps.mean(0), torch.zeros(model.cfg.d_model), atol=1e-5, rtol=0)
    raw = pair_representations(model, pairs[:3], layer=1, center=False, batch_size=2)
    one = pair_representations(model, pairs[2:3], layer=1, center=False)
    torch.testing.assert_close(raw[2], one[0], atol=1e-4, rtol=0)  # padding does not matter
    rv = icl_mean_vectors(model, rel, layer=2, shots=1, n_prompts=2)
    assert rv.shape == (3, model.cfg.d_model)
    ud = unembed_difference(model, pairs[:2])
    tok = model.tokenizer
    b = tok(" cold", add_special_tokens=False)["input_ids"][0]
    a = tok(" hot", add_special_tokens=False)["input_ids"][0]
    torch.testing.assert_close(ud[0], (model.W_U[:, b] - model.W_U[:, a]).detach())
    assert_no_hooks(model)


def test_real_ratings_file(shared_data):
    path = os.path.join(shared_data, "relsim", "relsim_mean_ratings.csv")
    if not os.path.isfile(path):
        pytest.skip("relsim ratings absent")
    rows = read_ratings(path)
    rel = relation_pairs(rows)
    assert len(rel) >= 10
    assert {r.comparison_type for r in rows} == {"within-subtype", "between-subtype",
                                                 "between-type"}


def test_random_draws_give_the_chance_level(ratings_csv):
    from fvlens.relational.similarity import random_draws

    rows = read_ratings(ratings_csv)
    pairs = [p for ps in relation_pairs(rows).values() for p in ps]
    out = random_draws(lambda v: pair_level(rows, pairs, v, n_perm=0, n_boot=0), len(pairs), 16,
                       draws=6)
    assert set(out) == {"all", "within-subtype", "between-subtype", "between-type"}
    assert out["all"]["draws"] == 6 and out["all"]["sd_r"] > 0
    assert abs(out["all"]["mean_r"]) <= out["all"]["max_abs_r"]
