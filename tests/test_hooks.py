"""fvlens.hooks.frozen_parameters: weights out of the backward pass, flags restored."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny
from fvlens.hooks import frozen_parameters


def test_frozen_parameters_keeps_gradients_off_the_weights_and_restores_flags():
    model = make_tiny("llama")
    params = list(model.parameters())
    params[0].requires_grad_(False)  # a flag that is already off stays off afterwards
    before = [p.requires_grad for p in params]
    tokens = torch.tensor([[1, 5, 7, 9]])
    with frozen_parameters(model):
        assert not any(p.requires_grad for p in model.parameters())
        embed = model.embed(tokens).detach().requires_grad_(True)
        model(embed, start_at_layer=0).sum().backward()
    assert embed.grad is not None and embed.grad.abs().sum() > 0
    assert all(p.grad is None for p in params)
    assert [p.requires_grad for p in params] == before
    with pytest.raises(RuntimeError, match="boom"):
        with frozen_parameters(model):
            raise RuntimeError("boom")
    assert [p.requires_grad for p in params] == before


def test_count_hooks_counts_each_hook_once_and_sees_leftovers():
    from fvlens.hooks import assert_no_hooks, count_hooks

    model = make_tiny("llama")
    assert count_hooks(model) == 0

    def noop(x, hook):
        return None

    hooks = [("blocks.0.attn.hook_z", noop), ("blocks.1.hook_resid_post", noop),
             ("blocks.1.hook_resid_post", noop)]
    with model.hooks(fwd_hooks=hooks, bwd_hooks=[("blocks.0.hook_resid_pre", noop)]):
        assert count_hooks(model) == 4
        with model.hooks(fwd_hooks=[("hook_embed", noop)]):  # nested contexts add up
            assert count_hooks(model) == 5
        assert count_hooks(model) == 4
    assert count_hooks(model) == 0
    handle = model.blocks[0].hook_resid_pre.register_forward_hook(lambda *a: None)
    with pytest.raises(AssertionError, match="1 hooks left"):
        assert_no_hooks(model)
    handle.remove()
    assert_no_hooks(model)
