"""AttnLRP: each rule against its closed form, exact relevance budgets on tiny models (and
proof that a wrong rule breaks them), value-exactness, hygiene, and agreement with an
independent from-scratch implementation on the embedded model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny
from transformer_lens import HookedTransformer

from fvlens.attnlrp import (
    Relevance,
    attnlrp_hooks,
    explain,
    explain_batch,
    gated_product_rule,
    identity_rule,
    norm_rule,
    relevance_at,
    uniform_rule,
)
from fvlens.hooks import assert_no_hooks
from fvlens.attnlrp.relevance import _trace

RULE_ATOL = 1e-5  # closed forms on small float32 tensors (lxt's tolerance)
BUDGET_ATOL = 1e-9  # budget identities in float64: only summation round-off remains
BROKEN_MIN = 1e-3  # a wrong rule must miss a budget by at least this much
BATCH_ATOL = 1e-5  # padded batch vs one prompt at a time, float32 (different reductions)
REFERENCE_RTOL = 1e-4  # hook implementation vs independent implementation, float32


# ---------------------------------------------------------------- rules vs closed forms


def _grad_x_input(out: torch.Tensor, inputs: list[torch.Tensor], g: torch.Tensor):
    grads = torch.autograd.grad((out * g).sum(), inputs)
    return [x * gx for x, gx in zip(inputs, grads)]


def test_uniform_rule_elementwise_product_splits_relevance_evenly():
    torch.manual_seed(0)
    a, b = torch.randn(5, requires_grad=True), torch.randn(5, requires_grad=True)
    g = torch.randn(5)
    y = uniform_rule(a * b)
    assert torch.equal(y, a * b)
    r_a, r_b = _grad_x_input(y, [a, b], g)
    r_out = (y * g).detach()
    torch.testing.assert_close(r_a, r_out / 2, atol=RULE_ATOL, rtol=0)
    torch.testing.assert_close(r_b, r_out / 2, atol=RULE_ATOL, rtol=0)


def test_uniform_rule_matmul_closed_form():
    """Prop. 3.3: R_A[i,k] = ½ Σ_j A_ik B_kj g_ij, R_B[k,j] = ½ Σ_i A_ik B_kj g_ij."""
    torch.manual_seed(1)
    a, b = torch.randn(3, 4, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    g = torch.randn(3, 2)
    r_a, r_b = _grad_x_input(uniform_rule(a @ b), [a, b], g)
    terms = a.detach()[:, :, None] * b.detach()[None] * g[:, None, :]  # [i, k, j]
    torch.testing.assert_close(r_a, terms.sum(2) / 2, atol=RULE_ATOL, rtol=0)
    torch.testing.assert_close(r_b, terms.sum(0) / 2, atol=RULE_ATOL, rtol=0)


def test_uniform_rule_keeps_minus_inf():
    x = torch.tensor([0.5, -torch.inf], requires_grad=True)
    assert torch.equal(uniform_rule(x), x)


@pytest.mark.parametrize("act", [F.gelu, F.silu, torch.tanh])
def test_identity_rule_passes_relevance_unchanged(act):
    torch.manual_seed(2)
    x = torch.randn(7, requires_grad=True)
    x.data[0] = 0.0  # the 0/0 guard
    g = torch.randn(7)
    y = identity_rule(x, act(x))
    assert torch.equal(y, act(x))
    (r_x,) = _grad_x_input(y, [x], g)
    torch.testing.assert_close(r_x, (y * g).detach(), atol=RULE_ATOL, rtol=0)


def test_gated_product_rule_closed_form():
    torch.manual_seed(3)
    pre, lin = torch.randn(6, requires_grad=True), torch.randn(6, requires_grad=True)
    b_in, g = torch.randn(6), torch.randn(6)
    post = F.silu(pre) * lin + b_in
    y = gated_product_rule(pre, lin, post, F.silu(pre).detach())
    assert torch.equal(y, post)
    r_pre, r_lin = _grad_x_input(y, [pre, lin], g)
    half = ((post - b_in) * g / 2).detach()  # b_in keeps its own share
    torch.testing.assert_close(r_pre, half, atol=RULE_ATOL, rtol=0)
    torch.testing.assert_close(r_lin, half, atol=RULE_ATOL, rtol=0)


def test_softmax_gradient_is_prop_3_1():
    """R_in = x ⊙ (R_out − s Σ R_out) with R_out = s ⊙ g; −inf entries get no relevance."""
    torch.manual_seed(4)
    x = torch.randn(2, 5)
    x[1, 3] = -torch.inf
    x.requires_grad_(True)
    g = torch.randn(2, 5)
    s = torch.softmax(x, -1)
    (grad,) = torch.autograd.grad((s * g).sum(), [x])
    finite = torch.isfinite(x)
    r_in = torch.where(finite, x * grad, 0.0)
    r_out = (s * g).detach()
    closed = torch.where(finite, x * (r_out - s * r_out.sum(-1, keepdim=True)), 0.0)
    torch.testing.assert_close(r_in, closed.detach(), atol=RULE_ATOL, rtol=0)
    assert not r_in.isnan().any()


@pytest.mark.parametrize("center", [False, True])
def test_norm_rule_rms_identity_and_layernorm_conservation(center):
    torch.manual_seed(5)
    x, w, g = torch.randn(3, 8, requires_grad=True), torch.randn(8), torch.randn(3, 8)
    xc = x - x.mean(-1, keepdim=True) if center else x
    y = xc / norm_rule((xc.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()) * w
    (r_x,) = _grad_x_input(y, [x], g)
    r_out = (y * g).detach()
    if center:  # centering is linear: relevance is conserved per position
        torch.testing.assert_close(r_x.sum(-1), r_out.sum(-1), atol=RULE_ATOL, rtol=0)
    else:  # RMSNorm is element-wise once the scale is constant: identity rule
        torch.testing.assert_close(r_x, r_out, atol=RULE_ATOL, rtol=0)


# ---------------------------------------------------------------- budgets on tiny models


def _zero_biases(model: HookedTransformer) -> HookedTransformer:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1].lstrip("_").startswith("b"):
                p.zero_()
    return model


def _tokens(n: int = 6, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 50, (batch, n), generator=torch.Generator().manual_seed(seed))


def _budget_residuals(model, tokens, targets, *, rules=True, hooks=None, biases=False):
    """Largest violation of each budget identity (float64), per identity name."""
    n = model.cfg.n_layers
    names = ["hook_embed", f"blocks.{n - 1}.hook_resid_post"]
    for i in range(n):
        names += [
            f"blocks.{i}.{h}"
            for h in (
                "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "attn.hook_pattern",
                "attn.hook_attn_scores", "attn.hook_z", "attn.hook_q", "attn.hook_k",
                "attn.hook_v", "hook_attn_out", "hook_mlp_out", "mlp.hook_post", "mlp.hook_pre",
            )
        ]
    if "hook_pos_embed" in model.hook_dict:
        names.append("hook_pos_embed")
    names = list(dict.fromkeys(names))
    logits, acts, grads = _trace(model, tokens, targets, names, None, hooks or [], rules)
    rel = {k: torch.where(acts[k].isfinite(), acts[k] * grads[k], 0.0) for k in names}

    def total(name):  # summed per prompt
        return rel[name].flatten(1).sum(1)

    def absorbed(bias, name):  # relevance a bias keeps: Σ b · g at the bias's output
        return (grads[name] * bias.detach()).flatten(1).sum(1) if biases else 0.0

    out = {}
    final = rel[f"blocks.{n - 1}.hook_resid_post"]
    out["logit"] = (final.sum((1, 2)) - logits).abs().max()
    out["only_last_position"] = final[:, :-1].abs().max()
    inputs = total("hook_embed") + (total("hook_pos_embed") if "hook_pos_embed" in rel else 0)
    out["inputs"] = (inputs - total("blocks.0.hook_resid_pre")).abs().max()
    mlp, attn, av = [], [], []
    for i in range(n):
        b, a = model.blocks[i], f"blocks.{i}."
        mlp_bias = absorbed(b.mlp.b_out, a + "hook_mlp_out") + absorbed(
            b.mlp.b_in, a + ("mlp.hook_post" if model.cfg.gated_mlp else "mlp.hook_pre")
        )
        mlp.append(total(a + "hook_resid_post") - mlp_bias - total(a + "hook_resid_mid"))
        softmax_loss = total(a + "attn.hook_pattern") - total(a + "attn.hook_attn_scores")
        attn_bias = absorbed(b.attn.b_O, a + "hook_attn_out") + absorbed(b.attn.b_Q, a + "attn.hook_q")
        attn_bias = attn_bias + absorbed(getattr(b.attn, "_b_K", b.attn.b_K), a + "attn.hook_k")
        attn_bias = attn_bias + absorbed(getattr(b.attn, "_b_V", b.attn.b_V), a + "attn.hook_v")
        attn.append(
            total(a + "hook_resid_mid") - attn_bias - softmax_loss - total(a + "hook_resid_pre")
        )
        av.append(total(a + "attn.hook_pattern") - total(a + "attn.hook_z") / 2)
    out["mlp"] = torch.stack(mlp).abs().max()
    out["attention"] = torch.stack(attn).abs().max()
    out["pattern_half_of_z"] = torch.stack(av).abs().max()
    return {k: float(v) for k, v in out.items()}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_budget_identities_exact_without_biases(kind):
    model = _zero_biases(make_tiny(kind, dtype=torch.float64))
    res = _budget_residuals(model, _tokens(), torch.tensor([3, 7]))
    assert max(res.values()) < BUDGET_ATOL, res


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_budget_identities_account_for_biases(kind):
    """make_tiny gives b_Q/b_K/b_V/b_O/b_in/b_out random values; each keeps Σ b·g."""
    model = make_tiny(kind, dtype=torch.float64)
    tokens, targets = _tokens(), torch.tensor([3, 7])
    res = _budget_residuals(model, tokens, targets, biases=True)
    assert max(res.values()) < BUDGET_ATOL, res
    ignored = _budget_residuals(model, tokens, targets, biases=False)
    assert ignored["mlp"] > BROKEN_MIN and ignored["attention"] > BROKEN_MIN, ignored


def _broken(model, variant):
    """The rules with one rule removed or wrong (forward values still unchanged)."""
    hooks = attnlrp_hooks(model)
    if variant == "z_not_halved":
        return [(n, f) for n, f in hooks if not n.endswith("hook_z")]
    if variant == "scores_not_halved":
        return [(n, f) for n, f in hooks if not n.endswith("hook_attn_scores")]
    if variant == "scale_not_detached":
        return [(n, f) for n, f in hooks if not n.endswith("hook_scale")]
    if variant == "plain_mlp_gradient":
        return [(n, f) for n, f in hooks if ".mlp." not in n]
    raise ValueError(variant)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize(
    "variant", ["z_not_halved", "scores_not_halved", "scale_not_detached", "plain_mlp_gradient"]
)
def test_budget_identities_fail_for_a_wrong_rule(kind, variant):
    model = _zero_biases(make_tiny(kind, dtype=torch.float64))
    res = _budget_residuals(
        model, _tokens(), torch.tensor([3, 7]), rules=False, hooks=_broken(model, variant)
    )
    assert max(res.values()) > BROKEN_MIN, res


# ---------------------------------------------------------------- value-exactness, hygiene


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_logits_unchanged(tiny_model, dtype):
    model = make_tiny("llama" if tiny_model.cfg.gated_mlp else "gpt2", dtype=dtype)
    tokens = _tokens(8)
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0
    for kwargs in ({}, {"attention_mask": mask}):
        plain = model(tokens, **kwargs)
        with model.hooks(fwd_hooks=attnlrp_hooks(model)):
            ruled = model(tokens, **kwargs)
        assert torch.equal(plain, ruled)
    assert_no_hooks(model)


def test_explain_leaves_model_as_it_was(tiny_model):
    model = tiny_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    params[0].requires_grad_(False)
    flags = [p.requires_grad for p in params]
    rel = explain(model, _tokens(5)[0], 4)
    relevance_at(model, _tokens(5), torch.tensor([1, 2]), ["blocks.0.hook_resid_pre"])
    assert_no_hooks(model)
    assert [p.requires_grad for p in params] == flags
    assert all(p.grad is None for p in params)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(rel, Relevance) and rel.target == 4 and rel.str_tokens is None
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert rel.tokens.shape == (5,) and rel.attention.shape == (L, H, 5)
    assert rel.heads.shape == (L, H)
    with torch.no_grad():
        logit = model(_tokens(5)[:1])[0, -1, 4].item()
    assert rel.logit == pytest.approx(logit, abs=1e-5)


def test_relevance_fields_are_consistent(tiny_model):
    """tokens sum to Σ R(resid_pre 0); each layer's pattern row carries half its heads'."""
    model = tiny_model
    tokens = _tokens(6)[:1]
    rel = explain(model, tokens[0], 9)
    r0 = relevance_at(model, tokens, torch.tensor([9]), ["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(rel.tokens.sum(), r0["blocks.0.hook_resid_pre"].sum())
    # last query: R(pattern row) = ½ R(z at the last position), head by head
    torch.testing.assert_close(rel.attention.sum(-1), rel.heads / 2, atol=1e-6, rtol=1e-5)


def test_padded_batch_matches_single_prompts(tiny_model):
    model = tiny_model
    a, b = _tokens(7, 1, seed=1)[0], _tokens(4, 1, seed=2)[0]
    tokens = torch.stack([a, torch.cat([torch.zeros(3, dtype=torch.long), b])])
    mask = torch.ones_like(tokens)
    mask[1, :3] = 0
    batch = explain_batch(model, tokens, torch.tensor([5, 6]), attention_mask=mask)
    assert_no_hooks(model)
    for field in (batch.tokens, batch.attention, batch.heads, batch.logits):
        assert not field.isnan().any()
    single = explain(model, b, 6)
    torch.testing.assert_close(batch[1].tokens[3:], single.tokens, atol=BATCH_ATOL, rtol=0)
    assert batch.tokens[1, :3].abs().max() == 0
    torch.testing.assert_close(
        batch[1].attention[..., 3:], single.attention, atol=BATCH_ATOL, rtol=0
    )
    torch.testing.assert_close(batch[1].heads, single.heads, atol=BATCH_ATOL, rtol=0)
    full = relevance_at(
        model, tokens, torch.tensor([5, 6]), ["blocks.0.attn.hook_attn_scores"],
        attention_mask=mask,
    )
    assert not full["blocks.0.attn.hook_attn_scores"].isnan().any()


def test_composes_with_user_hooks(tiny_llama):
    """A user's head ablation after the rules: that head then gets no relevance."""
    model = tiny_llama

    def ablate(z, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    user = [("blocks.1.attn.hook_z", ablate)]
    rel = relevance_at(
        model, _tokens(5), torch.tensor([1, 2]), ["blocks.1.attn.hook_z"], extra_hooks=user
    )["blocks.1.attn.hook_z"]
    assert rel[:, :, 1].abs().max() == 0 and rel[:, :, 0].abs().max() > 0
    with model.hooks(fwd_hooks=attnlrp_hooks(model) + user):
        model(_tokens(5))
    assert_no_hooks(model)


def test_errors_name_the_fix(tiny_llama):
    with pytest.raises(ValueError, match="close matches"):
        relevance_at(tiny_llama, _tokens(3), torch.tensor([1, 2]), ["blocks.0.hook_z"])
    with pytest.raises(ValueError, match="token id"):
        explain(tiny_llama, _tokens(3)[0], "cat")
    capped = make_tiny("gpt2", attn_scores_soft_cap=30.0)  # soft-caps need rotary models
    with pytest.raises(NotImplementedError, match="soft-capped attention without rotary"):
        attnlrp_hooks(capped)


# ---------------------------------------------------------------- independent reference


class _HalfMatmul(torch.autograd.Function):
    """a @ b; backward gives each factor half of the gradient (uniform rule)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return 0.5 * (g @ b.transpose(-1, -2)), 0.5 * (a.transpose(-1, -2) @ g)


class _HalfMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return 0.5 * g * b, 0.5 * g * a


class _SiLUIdentity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x)  # silu(x)/x


class _RMSNormIdentity(torch.autograd.Function):
    """x / rms(x) with the rms a constant in the backward pass."""

    @staticmethod
    def forward(ctx, x, eps):
        rms = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        ctx.save_for_backward(rms)
        return x / rms

    @staticmethod
    def backward(ctx, g):
        (rms,) = ctx.saved_tensors
        return g / rms, None


class _Softmax(torch.autograd.Function):
    """Softmax with Prop. 3.1's relevance written as its gradient: s ⊙ (g − Σ s g)."""

    @staticmethod
    def forward(ctx, x):
        s = torch.softmax(x, -1)
        ctx.save_for_backward(s)
        return s

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        return s * (g - (s * g).sum(-1, keepdim=True))


def _reference_llama_lrp(model: HookedTransformer, tokens: torch.Tensor, target: int):
    """From-scratch Llama forward on TL's weights with the rules as custom autograd ops.

    Returns (token relevance [pos], last-query pattern relevance [L, H, pos], logit).
    """
    cfg = model.cfg
    rep = cfg.n_heads // (cfg.n_key_value_heads or cfg.n_heads)
    pos = tokens.shape[0]
    causal = torch.ones(pos, pos, dtype=torch.bool).tril()

    def norm(x, ln):
        y = _RMSNormIdentity.apply(x, cfg.eps)
        return y * ln.w if hasattr(ln, "w") else y

    embed = model.W_E[tokens].detach().clone().requires_grad_(True)
    x, patterns = embed, []
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        h = norm(x, block.ln1)
        q = torch.einsum("pd,hde->phe", h, attn.W_Q) + attn.b_Q
        k = torch.einsum("pd,hde->phe", h, attn._W_K) + attn._b_K
        v = torch.einsum("pd,hde->phe", h, attn._W_V) + attn._b_V
        q, k = attn.apply_rotary(q[None])[0], attn.apply_rotary(k[None])[0]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = _HalfMatmul.apply(q.transpose(0, 1), k.permute(1, 2, 0)) / attn.attn_scale
        scores = scores.masked_fill(~causal, -torch.inf)
        pattern = _Softmax.apply(scores)
        pattern.retain_grad()
        patterns.append(pattern)
        z = _HalfMatmul.apply(pattern, v.transpose(0, 1))  # [head, pos, d_head]
        x = x + torch.einsum("hpe,hed->pd", z, attn.W_O) + attn.b_O
        h = norm(x, block.ln2)
        mlp = block.mlp
        gate = _SiLUIdentity.apply(h @ mlp.W_gate)
        x = x + (_HalfMul.apply(gate, h @ mlp.W_in) + mlp.b_in) @ mlp.W_out + mlp.b_out
    logit = (norm(x, model.ln_final) @ model.W_U + model.b_U)[-1, target]
    logit.backward()
    tokens_rel = (embed * embed.grad).sum(-1)
    attention = torch.stack([(p * p.grad)[:, -1, :] for p in patterns])
    return tokens_rel.detach(), attention.detach(), logit.item()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_reference_implementation_on_tiny_llama():
    model = make_tiny("llama")
    for p in model.parameters():
        p.requires_grad_(False)
    tokens = _tokens(6)[0]
    ref_tokens, ref_attention, ref_logit = _reference_llama_lrp(model, tokens, 11)
    rel = explain(model, tokens, 11)
    assert rel.logit == pytest.approx(ref_logit, rel=REFERENCE_RTOL)
    assert _rel_err(rel.tokens, ref_tokens) < REFERENCE_RTOL
    assert _rel_err(rel.attention, ref_attention) < REFERENCE_RTOL


PROMPTS = [
    ("The capital of France is", " Paris"),
    ("hot -> cold, big -> small, up ->", " down"),
    ("Monday, Tuesday, Wednesday,", " Thursday"),
]


@pytest.mark.slow
@pytest.mark.parametrize("prompt,target", PROMPTS)
def test_explain_matches_independent_implementation(smollm, prompt, target):
    model = smollm
    rel = explain(model, prompt, target)
    tokens = model.to_tokens(prompt)[0]
    ref_tokens, ref_attention, ref_logit = _reference_llama_lrp(model, tokens, rel.target)
    assert rel.logit == pytest.approx(ref_logit, rel=REFERENCE_RTOL)
    assert _rel_err(rel.tokens, ref_tokens) < REFERENCE_RTOL, _rel_err(rel.tokens, ref_tokens)
    err = _rel_err(rel.attention, ref_attention)
    assert err < REFERENCE_RTOL, err
    assert rel.str_tokens is not None and len(rel.str_tokens) == len(tokens)
    assert_no_hooks(model)


def test_docs_manual_composition_equals_relevance_at(tiny_llama):
    """The hand-driven recipe in docs/attnlrp.md gives relevance_at's numbers."""
    model, tokens, name = tiny_llama, _tokens(5)[:1], "blocks.1.hook_resid_post"
    cache = {}

    def keep(x, hook):
        cache[hook.name] = x

    with model.hooks(fwd_hooks=attnlrp_hooks(model) + [(name, keep)]):
        logit = model(tokens)[0, -1, 7]
        (grad,) = torch.autograd.grad(logit, cache[name])
    manual = (cache[name] * grad).detach()
    assert all(p.grad is None for p in model.parameters())
    expected = relevance_at(model, tokens, torch.tensor([7]), [name])[name]
    torch.testing.assert_close(manual, expected, atol=1e-6, rtol=1e-5)
