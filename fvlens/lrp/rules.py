"""The AttnLRP rules (Achtibat et al., ICML 2024) and the hook list that applies them.

Each rule keeps the forward value bit-exact and changes only the gradient, so that gradient ×
input obeys LRP: identity rule for element-wise nonlinearities and norms, uniform rule for
products of two activations (Q·Kᵀ, A·V, the gate of a gated MLP); softmax keeps its ordinary
gradient, which *is* the paper's softmax rule (Prop. 3.1). https://arxiv.org/abs/2402.05602
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from fvlens.hooks import HookList, check_hook_names

__all__ = ["attnlrp_hooks", "gated_product_rule", "identity_rule", "norm_rule", "uniform_rule"]

class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``factor`` in the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.clone()  # a fresh tensor, so later hooks may edit it in place

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.factor, None


def _value_with_grad_of(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value`` in the forward pass (bit-exact); the gradient flows only into ``surrogate``."""
    return value.detach() + (surrogate - surrogate.detach())


def uniform_rule(x: Tensor, n_inputs: int = 2) -> Tensor:
    """Uniform rule (AttnLRP Eq. 7 / Prop. 3.2; for matmuls Prop. 3.3) on a product's output.

    For ``y = a * b`` (or a sum of such products, Q·Kᵀ and A·V) each of the ``n_inputs``
    factors receives ``R_y / n_inputs``. In gradient × input form that is the ordinary gradient
    divided by ``n_inputs``: ``a * (g * b / n) = R_y / n``. Value unchanged, even for -inf.
    """
    return _ScaleGrad.apply(x, 1.0 / n_inputs)


def _ratio(post: Tensor, pre: Tensor) -> Tensor:
    """``post / pre`` where ``pre`` is not ~0, else 0 (the relevance there is ~0 anyway)."""
    tiny = torch.finfo(pre.dtype).tiny
    safe = torch.where(pre.abs() > tiny, pre, torch.ones_like(pre))
    return torch.where(pre.abs() > tiny, post / safe, torch.zeros_like(pre)).detach()


def identity_rule(pre: Tensor, post: Tensor) -> Tensor:
    """Identity rule (AttnLRP Eq. 9) for an element-wise nonlinearity ``post = f(pre)``.

    Relevance passes through unchanged, ``R_pre = R_post``: the gradient is replaced by the
    constant ``f(pre) / pre`` so that ``pre * grad = post * g``. Returns ``post`` bit-exact.
    """
    return _value_with_grad_of(post, pre * _ratio(post, pre))


def gated_product_rule(
    pre: Tensor, pre_linear: Tensor, post: Tensor, act: Tensor
) -> Tensor:
    """Gated MLP ``post = act(pre) * pre_linear + b_in``: identity rule (Eq. 9) on the
    activation, then the uniform rule (Prop. 3.2) on the product.

    Gradient: ``d/dpre = 0.5 * pre_linear * act(pre)/pre`` and ``d/dpre_linear = 0.5 *
    act(pre)``, so ``R_pre = R_pre_linear = (post - b_in) * g / 2``; the bias ``b_in`` keeps its
    share. Returns ``post`` bit-exact.

    Args:
        pre: gate pre-activation (``mlp.hook_pre``).
        pre_linear: the linear branch (``mlp.hook_pre_linear``).
        post: the hooked ``mlp.hook_post`` value.
        act: ``act_fn(pre)``; only its ratio to ``pre`` is used (detached).
    """
    surrogate = uniform_rule(pre * _ratio(act, pre) * pre_linear)
    return _value_with_grad_of(post, surrogate)


def norm_rule(scale: Tensor) -> Tensor:
    """Identity rule for LayerNorm / RMSNorm (AttnLRP Prop. 3.4): the normalising scale is a
    constant in the backward pass, so the norm is linear and conserves relevance."""
    return scale.detach()


# ----------------------------------------------------------------------------------------
# Hook factories.
# ----------------------------------------------------------------------------------------


def _norm_hook(scale: Tensor, hook: HookPoint) -> Tensor:
    return norm_rule(scale)


def _uniform_hook(x: Tensor, hook: HookPoint) -> Tensor:
    return uniform_rule(x)


def _mlp_hooks(model: HookedTransformer, layer: int) -> HookList:
    """The MLP rules of one block: cache ``hook_pre`` (and ``hook_pre_linear``), then replace
    ``hook_post`` by its value-equal surrogate."""
    mlp = model.blocks[layer].mlp
    name = f"blocks.{layer}.mlp"
    cache: dict[str, Tensor] = {}

    def store(key: str):
        def fn(x: Tensor, hook: HookPoint) -> None:
            cache[key] = x

        return fn

    def post_hook(post: Tensor, hook: HookPoint) -> Tensor:
        pre = cache.pop("pre")
        if not model.cfg.gated_mlp:
            return identity_rule(pre, post)
        with torch.no_grad():
            act = mlp.act_fn(pre)
        return gated_product_rule(pre, cache.pop("pre_linear"), post, act)

    hooks: HookList = [(f"{name}.hook_pre", store("pre"))]
    if model.cfg.gated_mlp:
        hooks.append((f"{name}.hook_pre_linear", store("pre_linear")))
    return hooks + [(f"{name}.hook_post", post_hook)]


def _check_supported(model: HookedTransformer) -> None:
    cfg = model.cfg
    problems = []
    if cfg.attn_scores_soft_cap > 0 or cfg.output_logits_soft_cap > 0:
        problems.append("tanh soft-capping (attn_scores_soft_cap / output_logits_soft_cap)")
    if cfg.use_attention_sinks:
        problems.append("attention sinks (use_attention_sinks)")
    if cfg.num_experts:
        problems.append("mixture-of-experts MLPs (num_experts)")
    if cfg.act_fn is not None and cfg.act_fn.endswith("_ln"):
        problems.append(f"LayerNorm-in-MLP activation act_fn={cfg.act_fn!r}")
    if problems:
        raise NotImplementedError(
            "attnlrp_hooks has no rule yet for " + "; ".join(problems)
            + ". Supported: LayerNorm/RMSNorm, (gated) MLPs with element-wise activations, "
            "softmax attention with rotary/standard positions and GQA."
        )


def attnlrp_hooks(model: HookedTransformer) -> HookList:
    """The AttnLRP rules for ``model`` as a hook list (forward values unchanged).

    Norms: ``*.hook_scale`` detached. Attention: gradient halved at ``attn.hook_attn_scores``
    (Q·Kᵀ) and ``attn.hook_z`` (A·V); softmax untouched. MLP: identity rule on the
    activation, and in gated MLPs the uniform rule on the gate product, at ``mlp.hook_post``.

    Args:
        model: a HookedTransformer (parameters untouched).

    Returns:
        A HookList to pass as ``model.hooks(fwd_hooks=...)``; the hooks hold per-forward state
        (gated MLP inputs), so use one list per model at a time.
    """
    _check_supported(model)
    hooks: HookList = [(n, _norm_hook) for n in model.hook_dict if n.endswith("hook_scale")]
    for layer in range(model.cfg.n_layers):
        hooks.append((f"blocks.{layer}.attn.hook_attn_scores", _uniform_hook))
        hooks.append((f"blocks.{layer}.attn.hook_z", _uniform_hook))
        if not model.cfg.attn_only:
            hooks += _mlp_hooks(model, layer)
    check_hook_names(model, hooks)
    return hooks
