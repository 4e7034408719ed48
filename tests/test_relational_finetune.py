"""Fine-tuned function vectors: frozen model, hooks removed, loss goes down, vectors round-trip."""

from __future__ import annotations

import types

import pytest
import torch

from fvlens.hooks import assert_no_hooks
from fvlens.relational.finetune import (FinetuneConfig, finetune, grad_last_logits,
                                        load_vector, residual_scale, save_vector)
from fvlens.prompts import zero_shot_prompts
from fvlens.steering import DistributedFV, FunctionVector
from fvlens.tasks import load_task

# Tiny-model runs are short; the loss of 20 Adam steps at a generous lr must drop clearly.
LOSS_DROP = 0.05


def _fake_vectors(model, heads=((0, 1), (1, 2), (2, 0))):
    """What finetune reads from extract_vectors, without running head scoring."""
    gen = torch.Generator().manual_seed(1)
    fv = FunctionVector(vector=torch.randn(model.cfg.d_model, generator=gen), heads=heads, layer=1)
    dfv = DistributedFV(heads=heads, means=torch.randn(len(heads), model.cfg.d_head, generator=gen))
    return types.SimpleNamespace(fv={"aie": fv}, dfv={"aie": dfv}, dfv_scale={"aie": 2.0})


@pytest.mark.parametrize("field,value,match", [
    ("inject", "mlp", "inject"), ("init", "ones", "init"), ("pairs", 0, "pairs"),
    ("lr", -1.0, "lr"), ("val_fraction", 0.0, "val_fraction"), ("heads_from", "x", "heads_from"),
])
def test_config_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        FinetuneConfig(**{field: value})


def test_selection_follows_init():
    assert FinetuneConfig(init="attnlrp").selection == "attnlrp"
    assert FinetuneConfig(init="zeros", heads_from="attnlrp").selection == "attnlrp"


def test_grad_last_logits_flows_into_the_vector(tiny_tok_model):
    batch = zero_shot_prompts(tiny_tok_model, load_task("capitalize").pairs[:3])
    v = torch.zeros(tiny_tok_model.cfg.d_model, requires_grad=True)
    hooks = FunctionVector(vector=v, layer=1).hooks()
    logits = grad_last_logits(tiny_tok_model, batch.tokens, batch.attention_mask, hooks)
    logits.logsumexp(-1).sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert_no_hooks(tiny_tok_model)


def test_residual_scale_needs_one_target(tiny_tok_model):
    batch = zero_shot_prompts(tiny_tok_model, load_task("capitalize").pairs[:3])
    assert residual_scale(tiny_tok_model, batch, layer=2) > 0
    assert residual_scale(tiny_tok_model, batch, heads=[(0, 1)]) > 0
    with pytest.raises(ValueError, match="exactly one"):
        residual_scale(tiny_tok_model, batch)


@pytest.mark.parametrize("inject", ["fv", "dfv"])
def test_finetune_lowers_loss_and_leaves_the_model_alone(tiny_tok_model, inject):
    model = tiny_tok_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    cfg = FinetuneConfig(pairs=8, steps=20, batch_size=4, lr=0.1, inject=inject, init="zeros",
                         val_fraction=1.0, eval_every=5, n_test=5)
    res = finetune(model, "capitalize", cfg, vectors=_fake_vectors(model), progress=False)
    assert_no_hooks(model)
    assert [p.requires_grad for p in model.parameters()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    losses = [h["val_loss"] for h in res.history]
    assert len(losses) == 5 and res.history[0]["step"] == 0
    assert min(losses) < losses[0] - LOSS_DROP
    assert res.best_step > 0
    assert isinstance(res.vector, FunctionVector if inject == "fv" else DistributedFV)
    assert not _value(res.vector).requires_grad
    assert len(res.train_pairs) == 8 and len(res.val_pairs) == 8
    assert not set(res.train_pairs) & set(res.val_pairs)


def _value(v):
    return v.vector if isinstance(v, FunctionVector) else v.means


def test_finetune_is_deterministic(tiny_tok_model):
    cfg = FinetuneConfig(pairs=6, steps=4, batch_size=3, lr=0.05, init="random", layer=1,
                         val_fraction=0.5, n_test=5)
    a = finetune(tiny_tok_model, "capitalize", cfg, vectors=_fake_vectors(tiny_tok_model),
                 progress=False)
    b = finetune(tiny_tok_model, "capitalize", cfg, vectors=_fake_vectors(tiny_tok_model),
                 progress=False)
    assert torch.equal(a.vector.vector, b.vector.vector)
    assert a.history == b.history


def test_initialisations(tiny_tok_model):
    vecs = _fake_vectors(tiny_tok_model)
    base = dict(pairs=4, steps=1, batch_size=2, lr=1e-6, val_fraction=0.5, n_test=5)
    ext = finetune(tiny_tok_model, "capitalize", FinetuneConfig(init="aie", **base),
                   vectors=vecs, progress=False).initial
    assert torch.equal(ext.vector, vecs.fv["aie"].vector) and ext.layer == 1
    rnd = finetune(tiny_tok_model, "capitalize", FinetuneConfig(init="random", **base),
                   vectors=vecs, progress=False).initial
    assert torch.isclose(rnd.vector.norm(), vecs.fv["aie"].vector.norm())
    zero = finetune(tiny_tok_model, "capitalize",
                    FinetuneConfig(init="zeros", inject="dfv", **base), vectors=vecs,
                    progress=False).initial
    assert zero.heads == vecs.dfv["aie"].heads and zero.means.abs().sum() == 0
    dfv = finetune(tiny_tok_model, "capitalize", FinetuneConfig(init="aie", inject="dfv", **base),
                   vectors=vecs, progress=False).initial
    assert torch.allclose(dfv.means, 2.0 * vecs.dfv["aie"].means)  # the extracted scale


def test_too_few_pairs_is_an_error(tiny_tok_model):
    with pytest.raises(ValueError, match="lower pairs"):
        finetune(tiny_tok_model, "capitalize", FinetuneConfig(pairs=500, layer=1, init="zeros"),
                 progress=False)


@pytest.mark.parametrize("kind", ["fv", "dfv"])
def test_save_load_round_trip(tmp_path, tiny_tok_model, kind):
    vecs = _fake_vectors(tiny_tok_model)
    v = vecs.fv["aie"] if kind == "fv" else vecs.dfv["aie"]
    path = save_vector(tmp_path / "v.safetensors", v, meta={"task": "capitalize"})
    back, meta = load_vector(path)
    assert type(back) is type(v) and back.heads == v.heads and meta == {"task": "capitalize"}
    assert torch.equal(_value(back), _value(v))
    assert getattr(back, "layer", None) == getattr(v, "layer", None)


def test_load_vector_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_vector"):
        load_vector(tmp_path / "nope.safetensors")
