"""Function vectors as hook lists: values, composition, padding, no hooks left behind."""

from __future__ import annotations

import pytest
import torch

from fvlens.evaluation import last_logits
from fvlens.hooks import assert_no_hooks
from fvlens.steering import DistributedFV, FunctionVector
from test_aie import random_batch


def mean_z_for(model, seed: int = 0):
    cfg = model.cfg
    return torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head,
                       generator=torch.Generator().manual_seed(seed))


def test_fv_is_sum_of_head_outputs(tiny_model):
    mz = mean_z_for(tiny_model)
    heads = [(0, 1), (2, 3)]
    fv = FunctionVector.from_heads(tiny_model, mz, heads, layer=1)
    expected = sum(mz[a, b] @ tiny_model.blocks[a].attn.W_O[b] for a, b in heads)
    torch.testing.assert_close(fv.vector, expected.detach())


def test_fv_hook_adds_vector_at_last_position_only(tiny_model):
    fv = FunctionVector.from_heads(tiny_model, mean_z_for(tiny_model), [(0, 0)], layer=1)
    batch = random_batch()
    seen = {}

    def grab(x, hook):
        seen.setdefault("n", 0)
        seen[seen["n"]] = x.detach().clone()
        seen["n"] += 1

    with tiny_model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", grab)]):
        tiny_model(batch.tokens, attention_mask=batch.attention_mask)
    with tiny_model.hooks(fwd_hooks=fv.hooks() + [("blocks.1.hook_resid_post", grab)]):
        tiny_model(batch.tokens, attention_mask=batch.attention_mask)
    diff = seen[1] - seen[0]
    torch.testing.assert_close(diff[:, -1], fv.vector.expand(3, -1), atol=1e-5, rtol=0)
    assert diff[:, :-1].abs().max() == 0
    assert_no_hooks(tiny_model)


def test_dfv_edits_only_selected_heads(tiny_model):
    mz = mean_z_for(tiny_model)
    dfv = DistributedFV.from_heads(tiny_model, mz, [(1, 2), (1, 0), (2, 1)])
    hooks = dfv.hooks(scale=2.0)
    assert [name for name, _ in hooks] == ["blocks.1.attn.hook_z", "blocks.2.attn.hook_z"]
    z = torch.zeros(2, 4, tiny_model.cfg.n_heads, tiny_model.cfg.d_head)
    out = hooks[0][1](z, None)
    torch.testing.assert_close(out[:, -1, 2], 2 * mz[1, 2].expand(2, -1))
    torch.testing.assert_close(out[:, -1, 0], 2 * mz[1, 0].expand(2, -1))
    assert out[:, -1, 1].abs().max() == 0 and out[:, :-1].abs().max() == 0


def test_zero_scale_changes_nothing_and_vectors_compose(tiny_model):
    mz = mean_z_for(tiny_model)
    fv = FunctionVector.from_heads(tiny_model, mz, [(0, 0), (1, 1)], layer=0)
    dfv = DistributedFV.from_heads(tiny_model, mz, [(0, 0), (1, 1)])
    batch = random_batch()
    plain = last_logits(tiny_model, batch)
    torch.testing.assert_close(last_logits(tiny_model, batch, fwd_hooks=fv.hooks(scale=0.0)), plain)
    torch.testing.assert_close(last_logits(tiny_model, batch, fwd_hooks=dfv.hooks(scale=0.0)),
                               plain)
    both = last_logits(tiny_model, batch, fwd_hooks=fv.hooks() + dfv.hooks())
    assert not torch.allclose(both, plain)
    assert_no_hooks(tiny_model)


def test_steering_is_padding_safe(tiny_model):
    mz = mean_z_for(tiny_model)
    dfv = DistributedFV.from_heads(tiny_model, mz, [(0, 0), (2, 3)])
    batch = random_batch()
    padded = last_logits(tiny_model, batch, fwd_hooks=dfv.hooks())
    single = last_logits(tiny_model, batch.select([1]), fwd_hooks=dfv.hooks())
    torch.testing.assert_close(single[0], padded[1], atol=1e-5, rtol=0)


def test_errors_name_the_fix(tiny_model):
    mz = mean_z_for(tiny_model)
    with pytest.raises(ValueError, match="3 layers of 4 heads"):
        FunctionVector.from_heads(tiny_model, mz, [(5, 0)])
    with pytest.raises(ValueError, match="layer sweep"):
        FunctionVector.from_heads(tiny_model, mz, [(0, 0)]).hooks()


def test_layer_sweep_equals_hooked_evaluation(tiny_tok_model):
    from fvlens.evaluation import evaluate
    from fvlens.injection import layer_sweep
    from fvlens.prompts import zero_shot_prompts
    from fvlens.tasks import load_task

    batch = zero_shot_prompts(tiny_tok_model, load_task("antonym").pairs[:5])
    fv = FunctionVector.from_heads(tiny_tok_model, mean_z_for(tiny_tok_model), [(0, 1), (1, 2)])
    sweep = layer_sweep(tiny_tok_model, batch, fv.vector, scale=3.0)
    assert set(sweep) == set(range(tiny_tok_model.cfg.n_layers))
    for layer, ev in sweep.items():
        ref = evaluate(tiny_tok_model, batch, fwd_hooks=fv.hooks(layer, scale=3.0))
        torch.testing.assert_close(ev.target_probs, ref.target_probs, atol=1e-6, rtol=0)
        assert torch.equal(ev.ranks, ref.ranks)
    assert_no_hooks(tiny_tok_model)


def test_heads_are_validated(tiny_model):
    mz = mean_z_for(tiny_model)
    with pytest.raises(ValueError, match="non-negative"):
        DistributedFV(heads=((0, -1),), means=torch.zeros(1, tiny_model.cfg.d_head))
    with pytest.raises(ValueError, match="distinct"):
        FunctionVector.from_heads(tiny_model, mz, [(0, 1), (0, 1)])
    with pytest.raises(ValueError, match="does not exist"):
        DistributedFV.from_heads(tiny_model, mz, [(40, 0)])
    wrong = DistributedFV(heads=((0, 9),), means=torch.zeros(1, tiny_model.cfg.d_head))
    with pytest.raises(ValueError, match="another model"):
        tiny_model.run_with_hooks(torch.tensor([[1, 2, 3]]), fwd_hooks=wrong.hooks())
    assert_no_hooks(tiny_model)
