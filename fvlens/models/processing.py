"""TransformerLens weight processing, recorded as flags, with an in-place path for RMS folding.

``Processing`` names TL's processing flags. ``process`` applies them in float32 through TL's
``ProcessWeights`` — except for the common case of the RMSNorm families (Llama, Qwen, Mistral,
Gemma, ...) with only ``fold_ln`` on, where it folds in place: ``ProcessWeights`` deep-copies
the whole state dict for every step, so the cold path would hold two float32 copies of the
model (4 GB more for a 0.5B model, 32 GB for an 8B one). The in-place fold does TL's exact
operations (``W_Q/K/V * ln1.w[None, :, None]``, ``W_in/W_gate * ln2.w[:, None]``,
``W_U * ln_final.w[:, None]``; the result is bit-identical, tested per family) one tensor at a
time. Post-norms and q/k norms (Gemma 2/3) are not folded, as in TL.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from transformer_lens import HookedTransformerConfig

__all__ = ["Processing", "process", "fold_rms_in_place"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Processing:
    """TransformerLens weight-processing flags, recorded on every loaded model.

    The defaults keep the model's true logits and head outputs: ``center_unembed`` would shift
    every logit by the vocabulary mean (log-probs unchanged, but the raw logit that AttnLRP
    explains moves), ``center_writing_weights`` would shift the residual stream that function
    vectors are added to, and ``fold_value_biases`` would move ``b_V`` out of ``hook_z``.
    ``fold_ln`` only folds the norm gains into the next weights, which changes no activation
    that fvlens reads.
    """

    fold_ln: bool = True
    center_writing_weights: bool = False
    center_unembed: bool = False
    fold_value_biases: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"Processing.{f.name} must be a bool")


def _fold_keys(cfg: HookedTransformerConfig, state: dict[str, torch.Tensor]):
    """``[(weight key, norm key, broadcast)]`` for an RMS fold, or None if the state dict or
    config is not the plain pre-norm layout the in-place fold covers."""
    if (cfg.normalization_type != "RMSPre" or cfg.parallel_attn_mlp or cfg.num_experts
            or getattr(cfg, "rmsnorm_uses_offset", False) or not cfg.final_rms):
        return None
    kv = "_" if cfg.n_key_value_heads is not None else ""
    plan = []
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        plan += [(f"{b}.attn.{w}", f"{b}.ln1.w", "qkv") for w in ("W_Q", f"{kv}W_K", f"{kv}W_V")]
        if not cfg.attn_only:
            mlp = ["W_in"] + (["W_gate"] if cfg.gated_mlp else [])
            plan += [(f"{b}.mlp.{w}", f"{b}.ln2.w", "rows") for w in mlp]
    plan.append(("unembed.W_U", "ln_final.w", "rows"))
    expected_norms = {n for _, n, _ in plan}
    norms_present = {k for k in state if k.endswith((".ln1.w", ".ln2.w")) or k == "ln_final.w"}
    if norms_present != expected_norms:
        return None
    for weight, norm, kind in plan:
        w, g = state.get(weight), state.get(norm)
        if w is None or g is None or g.dim() != 1:
            return None
        if (kind == "qkv" and (w.dim() != 3 or w.shape[1] != g.shape[0])) or \
                (kind == "rows" and (w.dim() != 2 or w.shape[0] != g.shape[0])):
            return None
    return plan


def fold_rms_in_place(cfg: HookedTransformerConfig, state: dict[str, torch.Tensor]) -> bool:
    """Fold the RMSNorm gains into the following weights, one tensor at a time.

    Returns:
        False (``state`` untouched) when the layout is not the plain one this covers.
    """
    plan = _fold_keys(cfg, state)
    if plan is None:
        return False
    for weight, norm, kind in plan:
        g = state[norm]
        scale = g[None, :, None] if kind == "qkv" else g[:, None]
        state[weight] = state[weight] * scale  # the old tensor is freed here, not at the end
    for norm in {n for _, n, _ in plan}:
        state[norm] = torch.ones_like(state[norm])
    return True


def process(cfg: HookedTransformerConfig, state: dict[str, torch.Tensor],
            processing: Processing) -> dict[str, torch.Tensor]:
    """Apply the processing flags to a float32 TL state dict (may modify it in place)."""
    from transformer_lens.weight_processing import ProcessWeights

    fold_ln = processing.fold_ln and cfg.normalization_type in ("LNPre", "RMSPre")
    others = (processing.center_writing_weights, processing.center_unembed,
              processing.fold_value_biases)
    if not any(others) and (not fold_ln or fold_rms_in_place(cfg, state)):
        return state
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ProcessWeights.process_weights(
            state, cfg, fold_ln=fold_ln,
            center_writing_weights=processing.center_writing_weights,
            center_unembed=processing.center_unembed,
            fold_value_biases=processing.fold_value_biases,
            refactor_factored_attn_matrices=False,
        )
