"""HeadScores: validation, ranking, overlap, aggregation and the exact JSON round trip."""

from __future__ import annotations

import json

import pytest
import torch

from fvlens.heads import HeadScores, overlap


def make(scores, method="aie", tasks=("antonym",), prompt_mode="icl", n_samples=10, **kw):
    if not isinstance(scores, torch.Tensor):
        scores = torch.tensor(scores, dtype=torch.float32)
    return HeadScores(scores=scores, method=method, tasks=tasks, prompt_mode=prompt_mode,
                      n_samples=n_samples, **kw)


def random_scores(seed=0, shape=(4, 3), **kw):
    g = torch.Generator().manual_seed(seed)
    return make(torch.randn(shape, generator=g), **kw)


# -- validation ----------------------------------------------------------------------------

def test_nan_rejected_with_method_name():
    with pytest.raises(ValueError, match="'attnlrp'.*non-finite"):
        make([[0.0, float("nan")]], method="attnlrp")


def test_inf_rejected():
    with pytest.raises(ValueError, match="non-finite"):
        make([[0.0, float("inf")]])


def test_not_2d_rejected():
    # jaxtyping (TypeError) catches it in the tests; __post_init__ (ValueError) without the hook.
    with pytest.raises((ValueError, TypeError)):
        make(torch.zeros(5))


@pytest.mark.parametrize("kw, match", [
    (dict(n_samples=-1), "n_samples"),
    (dict(prompt_mode="zero_shot"), "prompt_mode"),
    (dict(method=""), "method"),
    (dict(tasks=()), "tasks"),
])
def test_bad_fields_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        make([[1.0, 2.0]], **kw)


def test_per_task_shape_must_match():
    with pytest.raises(ValueError, match="per_task"):
        make([[1.0, 2.0]], per_task={"a": torch.zeros(2, 2)})


def test_scores_are_copied():
    t = torch.tensor([[1.0, 2.0]])
    hs = make(t)
    t[0, 0] = 9.0
    assert hs.scores[0, 0] == 1.0


# -- ranking -------------------------------------------------------------------------------

def test_top_k_order_and_ties():
    hs = make([[1.0, 5.0, 2.0],
               [5.0, 0.0, 2.0]])
    # 5.0 twice: (0, 1) before (1, 0); 2.0 twice: (0, 2) before (1, 2).
    assert hs.top_k(4) == [(0, 1), (1, 0), (0, 2), (1, 2)]
    assert hs.top_k(0) == []
    assert hs.top_k(6)[-1] == (1, 1)


def test_top_k_too_large_names_limit():
    hs = make([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        hs.top_k(5)
    with pytest.raises(ValueError):
        hs.top_k(-1)


def test_rank_matches_top_k():
    hs = random_scores(shape=(5, 4))
    rank = hs.rank()
    assert rank.dtype == torch.int64 and rank.shape == (5, 4)
    for i, (layer, head) in enumerate(hs.top_k(20)):
        assert rank[layer, head] == i
    assert sorted(rank.flatten().tolist()) == list(range(20))


# -- overlap -------------------------------------------------------------------------------

def test_overlap_free_function():
    out = overlap([(0, 1), (2, 3), (1, 1)], [(1, 1), (5, 0)])
    assert out["shared"] == [(1, 1)]
    assert out["only_self"] == [(0, 1), (2, 3)]
    assert out["only_other"] == [(5, 0)]
    assert out["jaccard"] == pytest.approx(1 / 4)
    assert overlap([], [])["jaccard"] == 1.0


def test_overlap_rejects_duplicates():
    with pytest.raises(ValueError, match="more than once"):
        overlap([(0, 1), (0, 1)], [])


def test_overlap_method():
    a = make([[4.0, 3.0], [2.0, 1.0]])
    b = make([[4.0, 1.0], [2.0, 3.0]], method="attnlrp")
    out = a.overlap(b, 2)
    assert out == {"shared": [(0, 0)], "only_self": [(0, 1)], "only_other": [(1, 1)],
                   "jaccard": pytest.approx(1 / 3)}
    assert a.overlap(a, 3)["jaccard"] == 1.0
    with pytest.raises(ValueError, match="different models"):
        a.overlap(make([[1.0, 2.0, 3.0]]), 1)


# -- aggregation ---------------------------------------------------------------------------

def test_aggregate_mean_over_included():
    per = {"a": make([[1.0, 2.0]], tasks=("a",), n_samples=3, meta={"seed": 0, "shots": 10}),
           "b": make([[3.0, 6.0]], tasks=("b",), n_samples=4, meta={"seed": 0, "shots": 5}),
           "c": make([[100.0, 0.0]], tasks=("c",), n_samples=5, meta={"seed": 0})}
    g = HeadScores.aggregate(per, include=["b", "a"])
    assert torch.equal(g.scores, torch.tensor([[2.0, 4.0]]))
    assert g.tasks == ("a", "b")
    assert g.n_samples == 7
    assert set(g.per_task) == {"a", "b"}
    assert g.meta == {"seed": 0, "aggregated_from": ["a", "b"], "excluded_tasks": ["c"]}
    everything = HeadScores.aggregate(per)
    assert everything.tasks == ("a", "b", "c")
    assert torch.allclose(everything.scores, torch.tensor([[104 / 3, 8 / 3]]))


def test_aggregate_errors():
    a = make([[1.0, 2.0]], tasks=("a",))
    with pytest.raises(ValueError, match="empty"):
        HeadScores.aggregate({})
    with pytest.raises(ValueError, match="no tasks"):
        HeadScores.aggregate({"a": a}, include=[])
    with pytest.raises(ValueError, match="available"):
        HeadScores.aggregate({"a": a}, include=["zzz"])
    with pytest.raises(ValueError, match="shape"):
        HeadScores.aggregate({"a": a, "b": make([[1.0, 2.0, 3.0]], tasks=("b",))})
    with pytest.raises(ValueError, match="method"):
        HeadScores.aggregate({"a": a, "b": make([[1.0, 2.0]], method="attnlrp")})
    with pytest.raises(ValueError, match="prompt_mode"):
        HeadScores.aggregate({"a": a, "b": make([[1.0, 2.0]], prompt_mode="instruction")})


# -- JSON ----------------------------------------------------------------------------------

def test_json_round_trip_exact(tmp_path):
    # float32 values that print with many digits must survive the round trip bit for bit.
    g = torch.Generator().manual_seed(1)
    per = {name: make(torch.randn(6, 5, generator=g) / 3, tasks=(name,), meta={"seed": 1})
           for name in ("a", "b")}
    hs = HeadScores.aggregate(per)
    back = HeadScores.from_json(json.loads(json.dumps(hs.to_json())))
    assert back == hs
    assert back.scores.dtype == torch.float32
    assert torch.equal(back.scores.view(torch.int32), hs.scores.view(torch.int32))
    path = hs.save(tmp_path / "sub" / "scores.json")
    assert HeadScores.load(path) == hs


def test_json_round_trip_float64_and_no_per_task():
    hs = make(torch.tensor([[0.1, 1 / 3]], dtype=torch.float64), meta={"note": "x"})
    back = HeadScores.from_json(hs.to_json())
    assert back == hs and back.per_task is None and back.scores.dtype == torch.float64


def test_json_errors(tmp_path):
    with pytest.raises(ValueError, match="not a HeadScores"):
        HeadScores.from_json({"scores": [[1.0]]})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        make([[1.0]], meta={"bad": object()}).to_json()
    with pytest.raises(FileNotFoundError):
        HeadScores.load(tmp_path / "missing.json")
