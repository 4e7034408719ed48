"""fvlens.analyses: extraction strategies, injection depth, cross-task transfer, frame search."""

from __future__ import annotations

import dataclasses

import plotly.graph_objects as go
import pytest
import torch

from conftest import make_tiny
from fvlens.analyses.contrast import Contrast, contrast_pass, paired_icl_prompts
from fvlens.analyses.depth import TaskVector, depth_summary
from fvlens.analyses.figures import cosine_heatmap, layer_curves, scale_curves, strategy_bars
from fvlens.analyses.strategies import (StrategyConfig, build_strategies, cosine_matrix,
                                        gradient_scores, mean_difference, pca_direction)
from fvlens.batch import PromptBatch
from fvlens.injection import (best_layer, best_layer_and_scale, layer_sweep, residual_cache,
                              scale_sweep)
from fvlens.evaluation import evaluate
from fvlens.hooks import assert_no_hooks, hook_name
from fvlens.prompts import icl_prompts, zero_shot_prompts
from fvlens.steering import FunctionVector
from fvlens.tasks import load_task

# The fast layer sweep resumes the same float32 computation from a cached residual; only the
# order of additions at the injected position can differ.
SWEEP_ATOL = 1e-5
# Central finite differences on a float64 model: truncation error O(eps²) with eps = 1e-4.
GRAD_RTOL = 1e-6


@pytest.fixture(scope="module")
def antonym():
    return load_task("antonym")


@pytest.fixture(scope="module")
def paired(tiny_tok_model, antonym):
    return paired_icl_prompts(tiny_tok_model, antonym.pairs[:5], antonym.pairs[5:40], shots=3,
                              seed=0)


def _random_vector(model, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return TaskVector(name="rand", vectors=scale * torch.randn(model.cfg.n_layers,
                                                               model.cfg.d_model, generator=g),
                      per_layer=True)


# --- prompts -----------------------------------------------------------------------------


def test_concat_keeps_rows_and_positions(tiny_tok_model, antonym):
    a = icl_prompts(tiny_tok_model, antonym.pairs[:2], antonym.pairs[10:40], shots=2, seed=1)
    b = icl_prompts(tiny_tok_model, antonym.pairs[2:5], antonym.pairs[10:40], shots=4, seed=2)
    both = PromptBatch.concat([a, b])
    assert len(both) == 5 and both.texts == a.texts + b.texts
    for src, rows in ((a, range(2)), (b, range(2, 5))):
        for i, j in zip(range(len(src)), rows):
            sub = src.select([i])
            ref = both.select([j])
            assert torch.equal(sub.tokens, ref.tokens)
            assert sub.frame_positions == ref.frame_positions
            assert sub.context_positions == ref.context_positions
    assert int(both.n_pad.min()) == 0


def test_paired_prompts_share_inputs_and_shuffle_labels(paired):
    clean, corrupted = paired
    assert clean.kind == "icl" and corrupted.kind == "icl_shuffled"
    for c, x in zip(clean.texts, corrupted.texts):
        qc = [line for line in c.split("\n") if line.startswith("Q:")]
        qx = [line for line in x.split("\n") if line.startswith("Q:")]
        ac = [line for line in c.split("\n") if line.startswith("A: ")]
        ax = [line for line in x.split("\n") if line.startswith("A: ")]
        assert qc == qx                      # same demonstrations, same query
        assert sorted(ac) == sorted(ax) and ac != ax   # labels permuted
    assert torch.equal(clean.targets, corrupted.targets)


# --- TaskVector and the fast sweep --------------------------------------------------------


def test_task_vector_hooks_are_function_vector_hooks(tiny_tok_model):
    fv = FunctionVector(vector=torch.randn(tiny_tok_model.cfg.d_model), heads=((0, 1),))
    tv = TaskVector.constant("fv", fv, tiny_tok_model.cfg.n_layers)
    assert not tv.per_layer and tv.heads == ((0, 1),)
    assert torch.equal(tv.at(2).vector, fv.vector) and tv.at(2).layer == 2
    (name, _), = tv.hooks(1, scale=2.0)
    assert name == hook_name("resid_post", 1)
    with pytest.raises(ValueError, match="layer 3 out of range"):
        tv.hooks(3)
    with pytest.raises((ValueError, TypeError)):  # jaxtyping checks the shape first
        TaskVector(name="x", vectors=torch.zeros(4), per_layer=True)


def test_fast_layer_and_scale_sweep_equal_hooked_evaluation(tiny_tok_model, antonym):
    model = tiny_tok_model
    batch = zero_shot_prompts(model, antonym.pairs[:7])
    assert int(batch.n_pad.max()) > 0  # padding is exercised
    tv = _random_vector(model)
    cache = residual_cache(model, batch, batch_size=4)
    sweep = layer_sweep(model, batch, tv.vectors, cache=cache)
    assert sorted(sweep) == list(range(model.cfg.n_layers))
    for layer, ev in sweep.items():
        ref = evaluate(model, batch, fwd_hooks=tv.hooks(layer))
        torch.testing.assert_close(ev.target_probs, ref.target_probs, atol=SWEEP_ATOL, rtol=0)
        assert torch.equal(ev.ranks, ref.ranks)
    scales = scale_sweep(model, batch, tv.vectors, 1, scales=(0.5, 2.0), cache=cache)
    ref = evaluate(model, batch, fwd_hooks=tv.hooks(1, scale=2.0))
    torch.testing.assert_close(scales[2.0].target_probs, ref.target_probs, atol=SWEEP_ATOL,
                               rtol=0)
    assert_no_hooks(model)
    with pytest.raises(ValueError, match="another batch"):
        layer_sweep(model, zero_shot_prompts(model, antonym.pairs[:2]), tv.vectors, cache=cache)


def test_best_layer_breaks_ties_by_rank_then_layer(tiny_tok_model, antonym):
    model = tiny_tok_model
    batch = zero_shot_prompts(model, antonym.pairs[:4])
    sweep = layer_sweep(model, batch, _random_vector(model).vectors)
    key = {layer: (-ev.top1, float(ev.ranks.float().mean()), layer) for layer, ev in sweep.items()}
    assert best_layer(sweep) == min(key, key=key.get)
    with pytest.raises(ValueError, match="empty"):
        best_layer({})


def test_best_layer_and_scale_is_the_best_cell_of_the_grid(tiny_tok_model, antonym):
    model = tiny_tok_model
    batch = zero_shot_prompts(model, antonym.pairs[:6])
    tv = _random_vector(model, seed=3, scale=1.0)
    scales = (0.5, 1.0, 4.0, 16.0)
    layer, scale = best_layer_and_scale(model, batch, tv.vectors, scales=scales)
    key = {}
    for s in scales:
        for l in range(model.cfg.n_layers):
            ev = evaluate(model, batch, fwd_hooks=tv.hooks(l, scale=s))
            key[(l, s)] = (-ev.top1, round(float(ev.ranks.float().mean()), 4))
    assert key[(layer, scale)] == min(key.values())
    cache = residual_cache(model, batch)
    assert best_layer_and_scale(model, batch, tv.vectors, scales=scales, cache=cache,
                                sweep_at_1=layer_sweep(model, batch, tv.vectors, cache=cache)) == \
        (layer, scale)
    with pytest.raises(ValueError, match="positive"):
        best_layer_and_scale(model, batch, tv.vectors, scales=(0.0, 1.0))
    assert_no_hooks(model)


# --- strategies --------------------------------------------------------------------------


def _synthetic_contrast(n=6, n_layers=2, d=5, seed=0, correct=None):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(n, n_layers, d, generator=g)
    corrupted = torch.randn(n, n_layers, d, generator=g)
    return Contrast(clean_resid=clean, corrupted_resid=corrupted,
                    clean_correct=torch.ones(n, dtype=torch.bool) if correct is None else correct,
                    z_clean=torch.zeros(n, n_layers, 3, 4),
                    z_corrupted=torch.zeros(n, n_layers, 3, 4),
                    grad_z=torch.zeros(n, n_layers, 3, 4))


def test_mean_difference_uses_correct_pairs_only():
    correct = torch.tensor([True, False, True, True, False, True])
    c = _synthetic_contrast(correct=correct)
    expected = (c.clean_resid - c.corrupted_resid)[correct].mean(0)
    torch.testing.assert_close(mean_difference(c), expected)
    torch.testing.assert_close(mean_difference(c, only_correct=False),
                               (c.clean_resid - c.corrupted_resid).mean(0))
    with pytest.raises(ValueError, match="none of the clean prompts"):
        mean_difference(_synthetic_contrast(correct=torch.zeros(6, dtype=torch.bool)))
    with pytest.raises(ValueError, match="no zero-shot residuals"):
        mean_difference(c, baseline="zero_shot")
    zs = Contrast(**{f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
                  | {"zero_shot_resid": torch.ones_like(c.clean_resid)})
    torch.testing.assert_close(mean_difference(zs, baseline="zero_shot"),
                               (c.clean_resid - 1)[correct].mean(0))
    with pytest.raises(ValueError, match="baseline must be"):
        mean_difference(zs, baseline="random")


def test_pca_direction_recovers_planted_axis_with_mean_sign_and_norm():
    # differences = mean + t_i * axis, so centred PCA must return ±axis.
    g = torch.Generator().manual_seed(1)
    axis = torch.tensor([0.0, 1.0, 0.0, 0.0])
    mean = torch.tensor([1.0, -0.5, 0.3, 0.0])
    t = torch.randn(8, generator=g)
    diffs = mean + t[:, None] * axis
    c = Contrast(clean_resid=diffs[:, None], corrupted_resid=torch.zeros(8, 1, 4),
                 clean_correct=torch.ones(8, dtype=torch.bool), z_clean=torch.zeros(8, 1, 1, 1),
                 z_corrupted=torch.zeros(8, 1, 1, 1), grad_z=torch.zeros(8, 1, 1, 1))
    p = pca_direction(c)[0]
    m = mean_difference(c)[0]
    torch.testing.assert_close(p.norm(), m.norm())
    assert float(p @ m) >= 0
    torch.testing.assert_close(p / p.norm(), -axis if float(axis @ m) < 0 else axis,
                               atol=1e-5, rtol=0)


def test_gradient_scores_match_finite_differences():
    """Attribution patching (Syed et al. 2023): score = Δz · ∂P/∂z, checked per head against
    the central difference of P(target) when z[last, h] moves along mean_z − z_corr."""
    model = make_tiny("llama", dtype=torch.float64, tokenizer=True)
    task = load_task("antonym")
    clean, corrupted = paired_icl_prompts(model, task.pairs[:3], task.pairs[3:30], shots=2)
    contrast = contrast_pass(model, clean, corrupted, batch_size=2)
    g = torch.Generator().manual_seed(3)
    mean_z = torch.randn(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head, generator=g)
    scores = gradient_scores(contrast, mean_z, task="antonym")
    assert scores.method == "gradient" and scores.n_samples == 3
    eps = 1e-4
    for layer, head in [(0, 1), (2, 3)]:
        delta = (mean_z[layer, head][None] - contrast.z_corrupted[:, layer, head]).double()

        def shift(s):
            def hook(z, hook):
                z = z.clone()
                z[:, -1, head] += s * delta.to(z.dtype)
                return z
            return [(hook_name("z", layer), hook)]

        def prob(s):  # float64 end to end (evaluate() returns float32 probabilities)
            with model.hooks(fwd_hooks=shift(s)):
                logits = model(corrupted.tokens, attention_mask=corrupted.attention_mask)
            p = logits[:, -1].softmax(-1)
            return p.gather(1, corrupted.targets[:, None])[:, 0]

        plus, minus = prob(eps), prob(-eps)
        fd = ((plus - minus) / (2 * eps)).mean()
        torch.testing.assert_close(scores.scores[layer, head].double(), fd, rtol=GRAD_RTOL,
                                   atol=1e-9)
    assert_no_hooks(model)


def test_build_strategies_and_cosines(tiny_tok_model, paired):
    model = tiny_tok_model
    zs = zero_shot_prompts(model, paired[0].queries)
    contrast = contrast_pass(model, *paired, zero_shot=zs, batch_size=3)
    assert_no_hooks(model)
    torch.testing.assert_close(contrast.zero_shot_resid[:, -1],
                               residual_cache(model, zs).resid[0][-1][:, -1], atol=1e-5, rtol=0)
    assert all(p.requires_grad is True or p.requires_grad is False for p in model.parameters())
    mean_z = torch.randn(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    grad = gradient_scores(contrast, mean_z)
    contrast = Contrast(clean_resid=contrast.clean_resid, corrupted_resid=contrast.corrupted_resid,
                        clean_correct=torch.ones(len(paired[0]), dtype=torch.bool),
                        z_clean=contrast.z_clean, zero_shot_resid=contrast.zero_shot_resid,
                        z_corrupted=contrast.z_corrupted, grad_z=contrast.grad_z)
    vecs = build_strategies(model, contrast=contrast, mean_z=mean_z,
                            head_scores={"gradient": grad},
                            strategies=("fv_gradient", "mean_diff", "pca", "mean_diff_zs"), k=3)
    assert set(vecs) == {"fv_gradient", "mean_diff", "pca", "mean_diff_zs"}
    torch.testing.assert_close(vecs["mean_diff_zs"].vectors,
                               (contrast.clean_resid - contrast.zero_shot_resid).mean(0))
    assert vecs["fv_gradient"].heads == tuple(grad.top_k(3))
    assert vecs["mean_diff"].per_layer and not vecs["fv_gradient"].per_layer
    vecs.pop("mean_diff_zs")
    cos = cosine_matrix(vecs, 1)
    m = torch.tensor(cos["matrix"])
    torch.testing.assert_close(m.diagonal(), torch.ones(3, dtype=m.dtype))
    torch.testing.assert_close(m, m.T)
    cos_best = cosine_matrix(vecs, {"fv_gradient": 0, "mean_diff": 1, "pca": 2})
    assert cos_best["layers"] == {"fv_gradient": 0, "mean_diff": 1, "pca": 2}
    assert isinstance(cosine_heatmap({"cosine": cos}), go.Figure)
    with pytest.raises(ValueError, match="head_scores\\['aie'\\]"):
        build_strategies(model, contrast=contrast, mean_z=mean_z, head_scores={},
                         strategies=("fv_aie",))


def test_strategy_config_validates():
    with pytest.raises(ValueError, match="unknown strategies"):
        StrategyConfig(strategies=("fv_magic",))
    with pytest.raises(ValueError, match="n_val must be"):
        StrategyConfig(n_val=0)
    with pytest.raises(ValueError, match="scales must be positive"):
        StrategyConfig(scales=(1.0, -2.0))
    with pytest.raises(ValueError, match="common_layer"):
        StrategyConfig(common_layer="middle")
    with pytest.raises(TypeError):
        StrategyConfig(("mean_diff",))  # keyword-only


def _fake_results():
    strat = lambda best, acc: {"best_layer": best, "val_top1": acc, "test_top1": acc,
                               "layer_sweep_test": {"0": 0.0, "1": acc, "2": acc / 2},
                               "layer_sweep_val": {"0": 0.1, "1": acc, "2": acc / 2},
                               "scale_sweep": {"0.5": 0.1, "1.0": acc, "2.0": 0.2}}
    return {"n_layers": 4, "tasks": {
        "a": {"zero_shot_top1": 0.0, "zero_shot_val_top1": 0.0, "icl_top1": 1.0,
              "strategies": {"mean_diff": strat(1, 0.8), "fv_aie": strat(3, 0.5)}},
        "b": {"zero_shot_top1": 0.1, "zero_shot_val_top1": 0.0, "icl_top1": 0.9,
              "strategies": {"mean_diff": strat(0, 0.6)}}}}


def test_depth_summary_and_figures():
    res = _fake_results()
    d = depth_summary(res)
    assert d["mean_diff"]["per_task"] == {"a": 0.5, "b": 0.25}
    assert d["mean_diff"]["mean"] == pytest.approx(0.375)
    assert d["mean_diff"]["std"] == pytest.approx(0.125)
    assert d["fv_aie"]["min"] == d["fv_aie"]["max"] == 1.0
    fig = layer_curves(res)
    assert len(fig.data) == 3
    fig = layer_curves(res, task="a")
    assert {t.name for t in fig.data} == {"mean_diff", "fv_aie"}
    assert list(fig.data[0].x) == [0.0, 1.0, 2.0]
    assert len(scale_curves(res, task="b").data) == 1
    assert len(strategy_bars(res).data) == 4
    with pytest.raises(ValueError, match="not in the results"):
        layer_curves(res, task="zzz")
    with pytest.raises(ValueError, match="n_layers"):
        depth_summary({"tasks": {}})


def test_contrast_mean_z_is_mean_head_activation(tiny_tok_model, paired):
    from fvlens.activations import mean_head_activations

    contrast = contrast_pass(tiny_tok_model, *paired, batch_size=2)
    c_all = Contrast(clean_resid=contrast.clean_resid, corrupted_resid=contrast.corrupted_resid,
                     clean_correct=torch.ones(len(paired[0]), dtype=torch.bool),
                     z_clean=contrast.z_clean, z_corrupted=contrast.z_corrupted,
                     grad_z=contrast.grad_z)
    ref = mean_head_activations(tiny_tok_model, paired[0], only_correct=False)
    torch.testing.assert_close(c_all.mean_z(), ref, atol=1e-5, rtol=0)


# --- transfer ----------------------------------------------------------------------------


def test_answer_of_rules_and_lookup():
    from fvlens.analyses.transfer import answer_of

    assert answer_of(load_task("capitalize"), "walk") == "Walk"
    assert answer_of(load_task("capitalize_first_letter"), "walk") == "W"
    assert answer_of(load_task("lowercase_first_letter"), "Walk") == "w"
    assert answer_of(load_task("choose_first_of_3"), "go") == "go"
    assert answer_of(load_task("choose_last_of_3"), "a, b, c") == "c"
    assert answer_of(load_task("antonym"), "hot") == "cold"
    assert answer_of(load_task("antonym"), "zzzz") is None
    for name in ("capitalize", "capitalize_first_letter", "lowercase_first_letter",
                 "choose_first_of_3"):  # a rule reproduces the task's own pairs
        t = load_task(name)
        assert all(answer_of(t, p.input) == p.output for p in t.pairs)


def test_transfer_matrix_shapes_baseline_and_kind(tiny_tok_model):
    from fvlens.analyses.transfer import TransferResult, transfer_heatmaps, transfer_matrix

    model = tiny_tok_model
    tasks = {n: load_task(n) for n in ("capitalize", "antonym")}
    g = torch.Generator().manual_seed(0)
    vectors = {n: FunctionVector(vector=3 * torch.randn(model.cfg.d_model, generator=g), layer=i)
               for i, n in enumerate(tasks)}
    res = transfer_matrix(model, vectors, tasks, n_test=6)
    assert res.sources == ("capitalize", "antonym", "none")
    assert res.targets == ("capitalize", "antonym") and res.n == {"capitalize": 6, "antonym": 6}
    # capitalize's rule gives its own targets, so on its own prompts A-kind is top-1.
    for i in (0, 2):
        assert res.a_kind[i][0] == pytest.approx(res.top1[i][0])
    assert res.a_kind_unsteered[2] == res.a_kind[2]  # the "none" row is its own baseline
    assert res.n_applicable[0][1] == 6          # a rule applies to any input
    assert res.n_applicable[1][1] == 6          # antonym on its own pairs: lookup
    ref = evaluate(model, zero_shot_prompts(model, [p for p in load_task("antonym").split(
        seed=0)[1].sample(6, seed=0).pairs]), fwd_hooks=vectors["capitalize"].hooks())
    assert res.top1[0][1] == pytest.approx(ref.top1)
    m = torch.tensor(res.cosine)
    torch.testing.assert_close(m.diagonal(), torch.ones(2, dtype=m.dtype))
    assert_no_hooks(model)
    back = TransferResult(**res.to_json())
    assert back == res
    fig = transfer_heatmaps(res.to_json())
    assert len(fig.data) == 3 and fig.data[0].z.shape == (3, 2) if hasattr(fig.data[0].z, "shape") \
        else len(fig.data[0].z) == 3
    with pytest.raises(ValueError, match="no layer"):
        transfer_matrix(model, {"capitalize": FunctionVector(vector=torch.zeros(
            model.cfg.d_model))}, tasks)


# --- frames ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capitalize_ins(tiny_tok_model):
    from fvlens.prompts import instruction_prompts

    task = load_task("capitalize")
    return task, instruction_prompts(tiny_tok_model, task, task.pairs[:4], instruction=2)


def test_instruction_positions_and_edit(tiny_tok_model, capitalize_ins):
    from fvlens.analyses.frames import edit_instruction, instruction_token_positions, with_frame
    from fvlens.prompts import tokenize

    model = tiny_tok_model
    task, batch = capitalize_ins
    text = task.instructions[2].text
    pos = instruction_token_positions(model, batch, text)
    ids, _ = tokenize(model, text)
    assert [batch.tokens[0, p].item() for p in pos[0]] == ids[-len(pos[0]):]
    # the annotated frame lies inside the instruction
    assert set(batch.frame_positions[0]) <= set(pos[0])
    edited = edit_instruction(batch, pos, [0, 2])
    for i in range(len(batch)):
        row = batch.tokens[i, int(batch.n_pad[i]):].tolist()
        drop = {pos[i][0] - int(batch.n_pad[i]), pos[i][2] - int(batch.n_pad[i])}
        expect = [t for j, t in enumerate(row) if j not in drop]
        assert edited.tokens[i, int(edited.n_pad[i]):].tolist() == expect
    assert torch.equal(edited.targets, batch.targets)
    replaced = edit_instruction(batch, pos, [1], replace_with=7)
    assert torch.equal(replaced.attention_mask, batch.attention_mask)
    assert replaced.tokens[0, pos[0][1]].item() == 7
    framed = with_frame(batch, pos, [3, 1])
    assert framed.frame_positions[0] == (pos[0][1], pos[0][3])


def test_search_frame_greedy_path(tiny_tok_model, capitalize_ins):
    from fvlens.analyses.frames import FrameConfig, frame_figure, search_frame

    model = tiny_tok_model
    task, batch = capitalize_ins
    cfg = FrameConfig(criterion="top5", max_size=2, n_candidates=3)
    res = search_frame(model, batch, task.instructions[2].text, cfg)
    assert len(res.path) == 3 and res.path[0]["removed"] == []
    assert res.path[0]["accuracy"] == pytest.approx(evaluate(model, batch).top(5))
    assert res.path[2]["removed"][:1] == res.path[1]["removed"]
    top3 = sorted(range(len(res.tokens)), key=lambda j: -res.relevance[j])[:3]
    assert set(res.path[2]["removed"]) <= set(top3)
    lowest = min(p["accuracy"] for p in res.path)
    first = next(p for p in res.path if p["accuracy"] == lowest)  # the smallest such set
    assert list(res.frame) == first["removed"]
    assert res.annotated and "".join(res.tokens[i] for i in res.annotated).strip() \
        in task.instructions[2].text
    ov = res.overlap()
    assert 0.0 <= ov["jaccard"] <= 1.0
    assert len(frame_figure(res).data) == 2
    assert_no_hooks(model)


def test_frames_fail_loudly(tiny_tok_model):
    from fvlens.analyses.frames import FrameConfig, instruction_samples

    task = load_task("capitalize")
    with pytest.raises(ValueError, match="no correctly answered samples.*top5"):
        instruction_samples(tiny_tok_model, task, 0, task.pairs[:3], criterion="top1")
    with pytest.raises(ValueError, match="criterion"):
        FrameConfig(criterion="top2")
    with pytest.raises(ValueError, match="mode"):
        FrameConfig(mode="mask")


# --- embedded model ----------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """One torch thread: on a shared, oversubscribed CPU two threads run ~20× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_mean_difference_steers_capitalize(smollm, one_thread):
    """A mean-difference vector (ICL − zero-shot) from 8 prompts moves zero-shot capitalize
    off zero (the shuffled-label difference does not on this model: docs/analyses.md)."""
    from fvlens.analyses.strategies import extract_vector
    from fvlens.analyses.transfer import target_queries

    task = load_task("capitalize")
    tv, layer, sweep = extract_vector(smollm, task, "mean_diff_zs", n_pairs=8, n_val=8, seed=0)
    assert tv.per_layer and sweep[layer] == max(sweep.values())
    test = zero_shot_prompts(smollm, target_queries(task, 12, seed=0))
    base = evaluate(smollm, test).top1
    steered = evaluate(smollm, test, fwd_hooks=tv.hooks(layer)).top1
    assert steered >= base + 0.2, (base, steered, layer)
    assert_no_hooks(smollm)
