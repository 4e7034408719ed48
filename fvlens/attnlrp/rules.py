"""The AttnLRP rules (Achtibat et al., ICML 2024) and the hook list that applies them.

Each rule keeps the forward value bit-exact and changes only the gradient, so that gradient ×
input obeys LRP: identity rule for element-wise nonlinearities and norms, uniform rule for
products of two activations (Q·Kᵀ, A·V, the gate of a gated MLP); softmax keeps its ordinary
gradient, which *is* the paper's softmax rule (Prop. 3.1). https://arxiv.org/abs/2402.05602

Norms inside the attention (Qwen3/Gemma 3 ``attn.q_norm``/``attn.k_norm``) and after the
sublayers (Gemma 2/3 ``ln1_post``/``ln2_post``) are norms like any other: their
``hook_scale`` is detached. Gemma 2's tanh soft-caps are element-wise nonlinearities: identity
rule, at the attention scores and at the output logits.

On a ``TransformerBridge`` an edited ``hook_scale`` moves the forward pass off Hugging Face's
own norm, so there the norm rule reads the norm's input and output instead
(``norm_surrogate``): the same gradient, the forward untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities.activation_functions import softcap_enabled

from fvlens.backend import cfg_get, hook_names, hook_point, is_bridge
from fvlens.hooks import HookList, check_hook_names
from fvlens.modeltype import Model

__all__ = ["attnlrp_hooks", "gated_product_rule", "identity_rule", "norm_rule",
           "norm_surrogate", "softcap_input_rule", "uniform_rule"]

class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``factor`` in the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.clone()  # a fresh tensor, so later hooks may edit it in place

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.factor, None


class _ScoresGrad(torch.autograd.Function):
    """``_ScaleGrad`` for attention scores: masked (-inf) scores take no gradient. A fully
    masked query row (a left-padding position) then passes no NaN from the softmax above it
    (TransformerLens 3.9's bridge softmaxes such rows to NaN; elsewhere this changes nothing:
    a masked score's gradient is 0)."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        ctx.save_for_backward(torch.isinf(x))
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (masked,) = ctx.saved_tensors
        return torch.where(masked, torch.zeros_like(grad), grad * ctx.factor), None


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
    """``post / pre`` where ``pre`` is not ~0 and ``post`` is finite, else 0 (the relevance
    there is ~0 anyway; ``post = -inf`` marks a masked attention score)."""
    tiny = torch.finfo(pre.dtype).tiny
    ok = (pre.abs() > tiny) & torch.isfinite(post)
    safe = torch.where(ok, pre, torch.ones_like(pre))
    return torch.where(ok, post / safe, torch.zeros_like(pre)).detach()


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


class _SoftcapInputGrad(torch.autograd.Function):
    """Identity forward; backward multiplies by ``(s / x) / tanh'(x / cap)`` where
    ``s = cap * tanh(x / cap)``: undoes the tanh derivative and applies the identity rule."""

    @staticmethod
    def forward(ctx, x: Tensor, cap: float) -> Tensor:  # type: ignore[override]
        y = torch.tanh(x / cap)
        slope = 1 - y * y  # tanh'(x / cap), as autograd will apply it
        factor = torch.where(slope > 0, _ratio(cap * y, x) / torch.where(slope > 0, slope, 1),
                             torch.zeros_like(x))
        ctx.save_for_backward(factor)
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (factor,) = ctx.saved_tensors
        return grad * factor, None


def softcap_input_rule(x: Tensor, cap: float) -> Tensor:
    """Identity rule (AttnLRP Eq. 9) for a soft-cap ``s = cap * tanh(x / cap)`` that code
    downstream applies to the returned tensor (TransformerLens caps the output logits after
    ``unembed.hook_out``, where no hook can reach).

    Returns ``x`` bit-exact. In the backward pass the gradient that arrives through the cap,
    ``g * tanh'(x / cap)``, is rescaled to ``g * s / x``, so that ``x * grad = s * g``:
    relevance passes the cap unchanged. Where ``tanh'`` has underflowed to 0 in the tensor's
    dtype (``|x| >~ 9 * cap`` in float32) the incoming gradient is already 0 and the relevance
    of that entry is lost; it is exact everywhere else. The rescaled gradient exists only
    upstream of the returned tensor: a hook reading the same hook point after this rule sees
    the gradient through the cap, ``g * tanh'(x / cap)``.
    """
    return _SoftcapInputGrad.apply(x, cap)


def norm_rule(scale: Tensor) -> Tensor:
    """Identity rule for LayerNorm / RMSNorm (AttnLRP Prop. 3.4): the normalising scale is a
    constant in the backward pass, so the norm is linear and conserves relevance."""
    return scale.detach()


def norm_surrogate(x: Tensor, y: Tensor, *, centered: bool, bias: Tensor | None = None
                   ) -> Tensor:
    """The norm rule (AttnLRP Prop. 3.4) from a norm's input ``x`` and output ``y`` alone.

    Returns ``y`` bit-exact; the gradient flows through ``xc * ((y - b) / xc)`` with the ratio
    held constant (``xc`` = ``x`` centred for LayerNorm, ``x`` for RMSNorm), which is the
    gradient of the norm with its scale detached: ``centering · w / scale``. The ratio is
    measured, not rebuilt, so pre-, post- and q/k-norms and Gemma's ``1 + w`` gains need no
    case of their own.
    """
    xc = x - x.mean(-1, keepdim=True) if centered else x
    yb = y if bias is None else y - bias
    return _value_with_grad_of(y, xc * _ratio(yb, xc))


# ----------------------------------------------------------------------------------------
# Hook factories.
# ----------------------------------------------------------------------------------------


def _norm_hook(scale: Tensor, hook: HookPoint) -> Tensor:
    return norm_rule(scale)


def _uniform_hook(x: Tensor, hook: HookPoint) -> Tensor:
    return uniform_rule(x)


def _uniform_scores_hook(scores: Tensor, hook: HookPoint) -> Tensor:
    return _ScoresGrad.apply(scores, 0.5)  # uniform rule (Prop. 3.3) on Q·Kᵀ


def _norm_rule_hooks(model: Model) -> tuple[HookList, HookList]:
    """The norm rule of every norm (every ``*.hook_scale``): (hooks at the norms' outputs,
    hooks recording their inputs). HookedTransformer: ``hook_scale`` detached. Bridge:
    ``norm_surrogate`` at ``P.hook_out`` from the input recorded at ``P.hook_in``."""
    scales = [n for n in hook_names(model) if n.endswith(".hook_scale")]
    if not is_bridge(model):
        return [(n, _norm_hook) for n in scales], []
    outputs: HookList = []
    inputs: HookList = []
    seen: set[int] = set()
    rms = str(model.cfg.normalization_type or "").startswith("RMS")
    for name in scales:
        if id(hook_point(model, name)) in seen:
            continue
        seen.add(id(hook_point(model, name)))
        prefix = name.removesuffix(".hook_scale")
        module = model.get_submodule(prefix)
        centered = not getattr(module, "uses_rms_norm", rms)
        store: dict[str, Tensor] = {}

        def keep(x: Tensor, hook: HookPoint, _store=store) -> None:
            _store["x"] = x

        keep.records_input = True  # type: ignore[attr-defined]  # see attnlrp.relevance._trace

        def rule(y: Tensor, hook: HookPoint, _store=store, _module=module,
                 _centered=centered) -> Tensor:
            component = getattr(_module, "original_component", None) or _module
            bias = getattr(component, "bias", None) if _centered else None
            return norm_surrogate(_store.pop("x"), y, centered=_centered,
                                  bias=bias if isinstance(bias, Tensor) else None)

        inputs.append((f"{prefix}.hook_in", keep))
        outputs.append((f"{prefix}.hook_out", rule))
    return outputs, inputs


def _mlp_hooks(model: Model, layer: int) -> HookList:
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


def _softcap_scores_hooks(model: Model, layer: int) -> HookList:
    """Soft-capped scores ``s = cap * tanh(q·kᵀ / scale)`` (Gemma 2): the uniform rule on the
    product (Prop. 3.3), then the identity rule (Eq. 9) on the cap.

    TransformerLens caps inside ``calculate_attention_scores``, before ``hook_attn_scores``,
    with no hook in between. So the hooks keep ``hook_rot_q``/``hook_rot_k`` and recompute the
    pre-cap product at ``hook_attn_scores``; the hooked scores keep their value bit-exact and
    their gradient flows only through the recomputed product, scaled by ``s / (q·kᵀ/scale)``.
    """
    attn = model.blocks[layer].attn
    name = f"blocks.{layer}.attn"
    group = model.cfg.n_heads // (model.cfg.n_key_value_heads or model.cfg.n_heads)
    cache: dict[str, Tensor] = {}

    def store(key: str):
        def fn(x: Tensor, hook: HookPoint) -> None:
            cache[key] = x

        return fn

    def scores_hook(scores: Tensor, hook: HookPoint) -> Tensor:
        q, k = cache.pop("q"), cache.pop("k")
        if group > 1:
            k = k.repeat_interleave(group, dim=2)
        product = uniform_rule(torch.einsum("bqhd,bkhd->bhqk", q, k) / attn.attn_scale)
        # Masked scores (-inf) take no gradient, as TransformerLens's mask does (a fully
        # masked padding row has a NaN softmax gradient).
        product = torch.where(torch.isfinite(scores), product, torch.zeros_like(product))
        return identity_rule(product, scores)

    return [(f"{name}.hook_rot_q", store("q")), (f"{name}.hook_rot_k", store("k")),
            (f"{name}.hook_attn_scores", scores_hook)]


def _output_softcap_hook(model: Model):
    cap = model.cfg.output_logits_soft_cap

    def fn(logits: Tensor, hook: HookPoint) -> Tensor:
        return softcap_input_rule(logits, cap)

    return fn


def _check_supported(model: Model) -> None:
    cfg = model.cfg
    problems = []
    if softcap_enabled(cfg.attn_scores_soft_cap) and cfg.positional_embedding_type != "rotary":
        problems.append("soft-capped attention without rotary embeddings (the rule recomputes "
                        "the pre-cap scores from hook_rot_q/hook_rot_k)")
    if softcap_enabled(cfg.attn_scores_soft_cap) and cfg_get(model, "use_logn_attn"):
        problems.append("soft-capped attention with log-n query scaling")
    if softcap_enabled(cfg.attn_scores_soft_cap) and is_bridge(model):
        problems.append("soft-capped attention scores on a TransformerBridge (Gemma 2; the "
                        "rule needs HookedTransformer's attention: backend='hooked')")
    if cfg_get(model, "use_attention_sinks"):
        problems.append("attention sinks (use_attention_sinks)")
    if cfg_get(model, "num_experts"):
        problems.append("mixture-of-experts MLPs (num_experts)")
    if cfg.act_fn is not None and cfg.act_fn.endswith("_ln"):
        problems.append(f"LayerNorm-in-MLP activation act_fn={cfg.act_fn!r}")
    if problems:
        raise NotImplementedError(
            "attnlrp_hooks has no rule yet for " + "; ".join(problems)
            + ". Supported: LayerNorm/RMSNorm (also as q/k norms and post-norms), (gated) MLPs "
            "with element-wise activations, softmax attention with rotary/standard positions, "
            "GQA, local windows, parallel attention+MLP, tanh soft-capping (rotary models)."
        )


def attnlrp_hooks(model: Model) -> HookList:
    """The AttnLRP rules for ``model`` as a hook list (forward values unchanged).

    Norms: ``*.hook_scale`` detached (``ln1``, ``ln2``, ``ln_final``, and where the model has
    them ``attn.q_norm``, ``attn.k_norm``, ``ln1_post``, ``ln2_post``); on a bridge
    ``norm_surrogate`` at each norm's ``hook_out``, from its input recorded at ``hook_in`` by
    hooks at the end of the list (compose edits of a norm's input before them:
    ``edits + attnlrp_hooks(model)``). Attention: gradient
    halved at ``attn.hook_attn_scores`` (Q·Kᵀ) and ``attn.hook_z`` (A·V); softmax untouched;
    a tanh soft-cap on the scores gets the identity rule (``_softcap_scores_hooks``). MLP:
    identity rule on the activation, and in gated MLPs the uniform rule on the gate product,
    at ``mlp.hook_post``. Output soft-cap: identity rule at ``unembed.hook_out``, so the
    relevance sums to the capped logit the model outputs.

    Args:
        model: a HookedTransformer or TransformerBridge (parameters untouched).

    Returns:
        A HookList to pass as ``model.hooks(fwd_hooks=...)``; the hooks hold per-forward state
        (gated MLP inputs), so use one list per model at a time.
    """
    _check_supported(model)
    hooks, norm_inputs = _norm_rule_hooks(model)
    for layer in range(model.cfg.n_layers):
        if softcap_enabled(model.cfg.attn_scores_soft_cap):
            hooks += _softcap_scores_hooks(model, layer)
        else:
            hooks.append((f"blocks.{layer}.attn.hook_attn_scores", _uniform_scores_hook))
        hooks.append((f"blocks.{layer}.attn.hook_z", _uniform_hook))
        if not model.cfg.attn_only:
            hooks += _mlp_hooks(model, layer)
    if softcap_enabled(model.cfg.output_logits_soft_cap):
        hooks.append(("unembed.hook_out", _output_softcap_hook(model)))
    hooks += norm_inputs
    check_hook_names(model, hooks)
    return hooks
