"""Every supported architecture family on a tiny random model (tests/families.py): AttnLRP is
value-exact and its relevance budgets close in float64 (with what each family adds: q/k norms,
post-norms, soft-caps, parallel blocks, biases), and each budget breaks when the family's own
rule is removed; fast AIE (both paths) equals the reference on a left-padded batch; FV and DFV
hook lists steer only the last position of a padded batch and leave no hook."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor
from families import FAMILIES, make_family, padded_batch

from fvlens.attnlrp import attnlrp_hooks, explain, explain_batch, uniform_rule
from fvlens.heads.aie import (_indirect_effects_kv_cache, _shared_prefix_supported,
                              indirect_effects)
from fvlens.hooks import assert_no_hooks
from fvlens.attnlrp.relevance import _trace
from fvlens.attnlrp.rules import identity_rule, softcap_input_rule
from fvlens.steering import DistributedFV, FunctionVector

BUDGET_ATOL = 1e-9  # budget identities in float64: only summation round-off remains
BROKEN_MIN = 1e-3  # a missing rule must miss its budget by at least this much
RULE_ATOL = 1e-5  # closed forms on small float32 tensors (lxt's tolerance)
# Fast and reference AIE compute the same probabilities with different batch shapes and
# summation order (float32): round-off only (benchmarks/results/families.json: <= 5e-8).
FAST_VS_REFERENCE_ATOL = 1e-6
BATCH_ATOL = 1e-5  # a prompt in a padded batch vs alone, float32 (different reductions)

NAMES = list(FAMILIES)


@functools.lru_cache(maxsize=None)
def family(name: str, dtype: torch.dtype = torch.float32, fold_ln: bool = False):
    """Read-only shared models (every test leaves them unhooked; asserted where hooks run).
    ``fold_ln``: norms folded as ``fvlens.load_model`` processes real checkpoints."""
    return make_family(name, dtype, fold_ln=fold_ln)


FOLD = pytest.mark.parametrize("fold_ln", [False, True], ids=["raw", "folded"])


def _features(model) -> set[str]:
    cfg = model.cfg
    out = set()
    if cfg.use_qk_norm:
        out.add("qk_norm")
    if cfg.use_normalization_before_and_after:
        out.add("post_norm")
    if cfg.attn_scores_soft_cap > 0:
        out.add("attn_softcap")
    if cfg.output_logits_soft_cap > 0:
        out.add("output_softcap")
    if cfg.parallel_attn_mlp:
        out.add("parallel")
    if cfg.attn_types and "local" in cfg.attn_types:
        out.add("local")
    return out


def test_families_cover_the_issue_list():
    assert {"llama", "qwen2", "qwen3", "gemma2", "gemma3", "mistral", "phi3", "gpt2",
            "gptneox"} <= set(NAMES)
    feats = {n: _features(family(n)) for n in NAMES}
    assert feats["gemma2"] >= {"post_norm", "attn_softcap", "output_softcap", "local"}
    assert feats["gemma3"] >= {"qk_norm", "post_norm", "local"}
    assert "parallel" in feats["gptneox"] and "qk_norm" in feats["qwen3"]


# ---------------------------------------------------------------- the soft-cap rules


def test_attention_softcap_rule_closed_form():
    """Uniform rule on q·kᵀ, identity rule on cap·tanh(·/cap): R_q = R_k = s ⊙ g / 2."""
    torch.manual_seed(0)
    q = torch.randn(3, 4, requires_grad=True)
    k = torch.randn(5, 4, requires_grad=True)
    g, cap = torch.randn(3, 5), 0.7
    x = q @ k.T
    s = cap * torch.tanh(x / cap)
    s[0, 4] = -torch.inf  # a masked score
    y = identity_rule(uniform_rule(x), s)
    assert torch.equal(y, s)
    gq, gk = torch.autograd.grad((y * torch.where(s.isfinite(), g, 0)).sum(), [q, k])
    r = torch.where(s.isfinite(), s * g, 0).detach()
    torch.testing.assert_close((q * gq).sum(1), r.sum(1) / 2, atol=RULE_ATOL, rtol=0)
    torch.testing.assert_close((k * gk).sum(1), r.sum(0) / 2, atol=RULE_ATOL, rtol=0)


def test_output_softcap_rule_closed_form():
    """softcap_input_rule before a downstream cap: x ⊙ grad = cap·tanh(x/cap) ⊙ g."""
    x = torch.tensor([0.0, 0.3, -1.2, 2.5, 4.0], requires_grad=True)
    g, cap = torch.tensor([1.0, -2.0, 0.5, 1.5, 1.0]), 1.3
    y = softcap_input_rule(x, cap)
    assert torch.equal(y, x)
    s = cap * torch.tanh(y / cap)
    (grad,) = torch.autograd.grad((s * g).sum(), [x])
    torch.testing.assert_close(x * grad, (s * g).detach(), atol=RULE_ATOL, rtol=0)


def test_softcap_needs_rotary_to_recompute_the_scores():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, d_head=4, n_heads=4, n_ctx=16,
                                  d_vocab=10, act_fn="gelu", normalization_type="LN",
                                  attn_scores_soft_cap=5.0)
    with pytest.raises(NotImplementedError, match="rotary"):
        attnlrp_hooks(HookedTransformer(cfg))


# ---------------------------------------------------------------- AttnLRP value-exactness


@FOLD
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_attnlrp_forward_is_value_exact(name, dtype, fold_ln):
    model = family(name, dtype, fold_ln)
    batch = padded_batch()
    with torch.no_grad():
        plain = model(batch.tokens, attention_mask=batch.attention_mask)
        with model.hooks(fwd_hooks=attnlrp_hooks(model)):
            ruled = model(batch.tokens, attention_mask=batch.attention_mask)
    assert torch.equal(plain, ruled)
    assert_no_hooks(model)


# ---------------------------------------------------------------- AttnLRP budgets (float64)


def _names(model) -> list[str]:
    cfg, hd = model.cfg, model.hook_dict
    names = ["hook_embed", "hook_pos_embed", "unembed.hook_out", "ln_final.hook_normalized"]
    per_block = ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                 "hook_mlp_out", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_rot_q",
                 "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z",
                 "mlp.hook_pre", "mlp.hook_post", "ln2.hook_normalized",
                 "ln1_post.hook_normalized", "ln1_post.hook_scale",
                 "ln2_post.hook_normalized", "ln2_post.hook_scale"]
    names += [f"blocks.{i}.{h}" for i in range(cfg.n_layers) for h in per_block]
    return [n for n in names if n in hd]


def _raw_logit_grad(model, acts, grads) -> Tensor:
    """The gradient at the raw logits u under the rules. ``unembed.hook_out`` reads the
    gradient through TL's cap, g·tanh'(u/c); the identity rule makes it g·s/u (closed form)."""
    grad, cap = grads["unembed.hook_out"], model.cfg.output_logits_soft_cap
    if cap <= 0:
        return grad
    u = acts["unembed.hook_out"]
    y = torch.tanh(u / cap)
    return grad * (cap * y / u) / (1 - y * y)


def budget_residuals(model, batch, hooks=None, rules: bool = True) -> dict[str, float]:
    """Largest violation (float64, over prompts and layers) of each relevance budget.

    Identities, with R(h) = Σ activation × gradient at hook h per prompt and "absorbed" the
    relevance a bias b keeps, Σ b · (gradient at the output it is added to):
      logit      R(final resid) + absorbed(ln_final.b, b_U) = the seeded logit (the capped
                 one under an output soft-cap: identity rule on the cap)
      inputs     R(hook_embed) + R(hook_pos_embed) = R(resid_pre 0)
      attention  R(resid_mid) − R(resid_pre) = absorbed(attention biases, ln1.b) + softmax loss
      mlp        R(resid_post) − R(resid_mid) = absorbed(b_in, b_out, ln2.b)
      block      (parallel blocks) R(resid_post) − R(resid_pre) = both sublayers' absorbed
                 + softmax loss
      qk_norm    R(hook_q) = R(hook_rot_q), R(hook_k) = R(hook_rot_k) (q/k norms, rotary)
      scores     R(q side) + R(k side) = R(hook_attn_scores) (uniform rule, and identity
                 rule on a soft-cap)
      pattern    R(hook_pattern) = R(hook_z) / 2 (uniform rule on A·V)
    The softmax loss R(pattern) − R(scores) is Prop. 3.1's, the same as in test_attnlrp.
    """
    cfg = model.cfg
    names = _names(model)
    logits, acts, grads = _trace(model, batch.tokens, batch.targets, names,
                                 batch.attention_mask, hooks or [], rules)
    rel = {k: torch.where(acts[k].isfinite(), acts[k] * grads[k], 0.0) for k in names}

    def total(name):
        return rel[name].flatten(1).sum(1) if name in rel else 0.0

    def absorbed(bias, grad):  # Σ b · g over everything but the batch
        if bias is None or grad is None:
            return 0.0
        return (grad * bias.detach()).flatten(1).sum(1)

    def norm_out_grad(prefix):  # gradient at a norm's output, from its hook_normalized
        ln = model.get_submodule(prefix)
        return grads[f"{prefix}.hook_normalized"] / ln.w if hasattr(ln, "b") else None

    def raw_out_grad(block, post, hook):  # gradient where b_O / b_out is added
        if cfg.use_normalization_before_and_after:
            return grads[f"{block}.{post}.hook_normalized"] / acts[f"{block}.{post}.hook_scale"]
        return grads[f"{block}.{hook}"]

    out: dict[str, list[Tensor]] = {}

    def record(key, value):
        out.setdefault(key, []).append(torch.as_tensor(value).abs().max())

    n = cfg.n_layers
    last = f"blocks.{n - 1}.hook_resid_post"
    final_bias = absorbed(getattr(model.ln_final, "b", None), norm_out_grad("ln_final"))
    record("logit", total(last) + final_bias
           + absorbed(model.unembed.b_U, _raw_logit_grad(model, acts, grads)) - logits)
    record("only_last_position", rel[last][:, :-1])
    record("inputs", total("hook_embed") + total("hook_pos_embed")
           - total("blocks.0.hook_resid_pre"))
    rotary = cfg.positional_embedding_type == "rotary"
    for i, block in enumerate(model.blocks):
        a = f"blocks.{i}"
        attn = block.attn
        softmax_loss = total(f"{a}.attn.hook_pattern") - total(f"{a}.attn.hook_attn_scores")
        # ln1 runs three times (query, key, value input): its bias b acts as a bias b·W of
        # each projection, absorbed at hook_q / hook_k / hook_v.
        ln_b = getattr(block.ln1, "b", None)
        attn_bias = absorbed(attn.b_O, raw_out_grad(a, "ln1_post", "hook_attn_out"))
        for x, w, b in (("q", attn.W_Q, attn.b_Q),
                        ("k", getattr(attn, "_W_K", attn.W_K), getattr(attn, "_b_K", attn.b_K)),
                        ("v", getattr(attn, "_W_V", attn.W_V), getattr(attn, "_b_V", attn.b_V))):
            if ln_b is not None:
                b = b + torch.einsum("m,hmd->hd", ln_b, w)
            attn_bias = attn_bias + absorbed(b, grads[f"{a}.attn.hook_{x}"])
        mlp = block.mlp
        mlp_bias = (absorbed(mlp.b_in, grads[f"{a}.mlp.hook_post" if cfg.gated_mlp
                                              else f"{a}.mlp.hook_pre"])
                    + absorbed(mlp.b_out, raw_out_grad(a, "ln2_post", "hook_mlp_out"))
                    + absorbed(getattr(block.ln2, "b", None), norm_out_grad(f"{a}.ln2")))
        pre, post = total(f"{a}.hook_resid_pre"), total(f"{a}.hook_resid_post")
        if cfg.parallel_attn_mlp:
            record("block", post - pre - attn_bias - mlp_bias - softmax_loss)
        else:
            mid = total(f"{a}.hook_resid_mid")
            record("attention", mid - pre - attn_bias - softmax_loss)
            record("mlp", post - mid - mlp_bias)
        q_side, k_side = (f"{a}.attn.hook_rot_q", f"{a}.attn.hook_rot_k") if rotary else \
            (f"{a}.attn.hook_q", f"{a}.attn.hook_k")
        record("scores", total(q_side) + total(k_side) - total(f"{a}.attn.hook_attn_scores"))
        if rotary:
            record("qk_norm", total(f"{a}.attn.hook_q") - total(q_side))
            record("qk_norm", total(f"{a}.attn.hook_k") - total(k_side))
        record("pattern", total(f"{a}.attn.hook_pattern") - total(f"{a}.attn.hook_z") / 2)
    return {k: float(torch.stack(v).max()) for k, v in out.items()}



@FOLD
@pytest.mark.parametrize("name", NAMES)
def test_budget_identities_close(name, fold_ln):
    model = family(name, torch.float64, fold_ln)
    res = budget_residuals(model, padded_batch())
    assert max(res.values()) < BUDGET_ATOL, res
    assert_no_hooks(model)


def _without(hooks, *suffixes, replace_scores: bool = False):
    kept = [(n, f) for n, f in hooks if not n.endswith(suffixes)]
    if replace_scores:  # the soft-capped scores with the plain product rule only
        names = sorted({n.rsplit(".", 1)[0] for n, _ in hooks if n.endswith("hook_attn_scores")})
        kept += [(f"{n}.hook_attn_scores", lambda x, hook: uniform_rule(x)) for n in names]
    return kept


# variant -> (feature it needs, how to break the rule list, the budget that must break)
BROKEN = {
    "norm_scales_attached": (None, lambda h: _without(h, "hook_scale"), "attention"),
    "z_not_halved": (None, lambda h: _without(h, "attn.hook_z"), "pattern"),
    "qk_norm_scales_attached": ("qk_norm", lambda h: _without(h, "q_norm.hook_scale",
                                                              "k_norm.hook_scale"), "qk_norm"),
    "post_norm_scales_attached": ("post_norm", lambda h: _without(
        h, "ln1_post.hook_scale", "ln2_post.hook_scale"), "attention"),
    "plain_tanh_on_scores": ("attn_softcap", lambda h: _without(
        h, "hook_rot_q", "hook_rot_k", "hook_attn_scores", replace_scores=True), "scores"),
    "plain_tanh_on_logits": ("output_softcap", lambda h: _without(h, "unembed.hook_out"),
                             "logit"),
    "plain_mlp_gradient": ("parallel", lambda h: _without(h, "mlp.hook_pre", "mlp.hook_post",
                                                          "mlp.hook_pre_linear"), "block"),
}
CASES = [(n, v) for n in NAMES for v, (feat, _, _) in BROKEN.items()
         if feat is None or feat in _features(family(n))]


@pytest.mark.parametrize("name,variant", CASES)
def test_budget_breaks_without_the_familys_rule(name, variant):
    model = family(name, torch.float64)
    _, broken, budget = BROKEN[variant]
    res = budget_residuals(model, padded_batch(), hooks=broken(attnlrp_hooks(model)),
                           rules=False)
    if budget == "attention" and model.cfg.parallel_attn_mlp:
        budget = "block"
    assert res[budget] > BROKEN_MIN, res


@pytest.mark.parametrize("name", NAMES)
def test_explain_batch_is_padding_safe(name):
    """The public reader on every family: no NaN on a padded batch, a padded prompt's
    relevance equals that prompt's alone, heads carry twice their pattern rows."""
    model = family(name)
    batch = padded_batch()
    rel = explain_batch(model, batch.tokens, batch.targets, attention_mask=batch.attention_mask)
    assert_no_hooks(model)
    assert not any(f.isnan().any() for f in (rel.tokens, rel.attention, rel.heads, rel.logits))
    pad = int((batch.attention_mask[1] == 0).sum())
    alone = explain(model, batch.tokens[1, pad:], int(batch.targets[1]))
    torch.testing.assert_close(rel[1].tokens[pad:], alone.tokens, atol=BATCH_ATOL, rtol=0)
    torch.testing.assert_close(rel[1].heads, alone.heads, atol=BATCH_ATOL, rtol=0)
    assert rel.tokens[1, :pad].abs().max() == 0
    torch.testing.assert_close(rel.attention.sum(-1), rel.heads / 2, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- fast AIE == reference


@FOLD
@pytest.mark.parametrize("name", NAMES)
def test_fast_aie_equals_reference_on_a_padded_batch(name, fold_ln):
    model = family(name, fold_ln=fold_ln)
    cfg = model.cfg
    batch = padded_batch(seed=2)
    mean_z = torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head,
                         generator=torch.Generator().manual_seed(1))
    assert _shared_prefix_supported(model) is None  # every family takes the shared-prefix path
    ref = indirect_effects(model, batch, mean_z, method="reference", progress=False)
    fast = indirect_effects(model, batch, mean_z, method="fast", batch_size=2, progress=False)
    with torch.no_grad():
        kv = _indirect_effects_kv_cache(model, batch, mean_z, batch_size=2, progress=False)
    assert ref.abs().max() > 1e-3  # the patches do something
    torch.testing.assert_close(fast, ref, atol=FAST_VS_REFERENCE_ATOL, rtol=0)
    torch.testing.assert_close(kv, ref, atol=FAST_VS_REFERENCE_ATOL, rtol=0)
    assert_no_hooks(model)


@pytest.mark.parametrize("name", [n for n in NAMES if _features(family(n)) & {
    "local", "attn_softcap", "output_softcap"}])
def test_windows_and_caps_act_on_the_tiny_prompts(name, monkeypatch):
    """The tiny sizes keep every family feature active: without its window or its caps the
    family's logits on the test prompts change, so the tests above are not vacuous."""
    model = family(name)
    batch = padded_batch()
    with torch.no_grad():
        logits = model(batch.tokens, attention_mask=batch.attention_mask)
    feats = _features(model)
    for feat in feats & {"local", "attn_softcap", "output_softcap"}:
        with monkeypatch.context() as m:
            if feat == "local":
                for block in model.blocks:
                    m.setattr(block.attn, "attn_type", "global")
            else:
                m.setattr(model.cfg, {"attn_softcap": "attn_scores_soft_cap",
                                      "output_softcap": "output_logits_soft_cap"}[feat], -1.0)
            with torch.no_grad():
                other = model(batch.tokens, attention_mask=batch.attention_mask)
        assert (other - logits)[:, -1].abs().max() > 1e-2, feat
    with torch.no_grad():
        again = model(batch.tokens, attention_mask=batch.attention_mask)
    assert torch.equal(again, logits)


# ---------------------------------------------------------------- FV / DFV on a padded batch


@pytest.mark.parametrize("name", NAMES)
def test_fv_and_dfv_steer_the_last_position_of_a_padded_batch(name):
    model = family(name)
    cfg = model.cfg
    batch = padded_batch()
    mean_z = torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head,
                         generator=torch.Generator().manual_seed(3))
    heads = [(0, 1), (1, 0), (1, 3), (2, 2)]
    lists = {"fv": FunctionVector.from_heads(model, mean_z, heads, layer=1).hooks(scale=4.0),
             "dfv": DistributedFV.from_heads(model, mean_z, heads).hooks()}
    tokens, mask = batch.tokens, batch.attention_mask
    with torch.no_grad():
        plain = model(tokens, attention_mask=mask)
        for kind, hooks in lists.items():
            pad = int((mask[0] == 0).sum())
            with model.hooks(fwd_hooks=hooks):
                steered = model(tokens, attention_mask=mask)
                alone = model(tokens[:1, pad:])  # row 0 without its padding
            assert_no_hooks(model)
            changed = (steered[:, -1] - plain[:, -1]).abs().amax(-1)
            assert (changed > 1e-3).all(), (kind, changed)
            real = mask[:, :-1].bool()
            assert torch.equal(steered[:, :-1][real], plain[:, :-1][real]), kind
            torch.testing.assert_close(steered[0, pad:], alone[0], atol=BATCH_ATOL, rtol=0)
