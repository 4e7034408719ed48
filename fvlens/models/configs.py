"""A Hugging Face config -> ``HookedTransformerConfig``, for every architecture fvlens converts.

Most architectures go through TransformerLens's own mapping
(``loading.get_pretrained_model_config`` on a folder holding the HF ``config.json``). TL 3.9
maps the Gemma family by hub *name* only (``google/gemma-3-270m`` …) and raises
NotImplementedError for a local Gemma config, so ``gemma_config`` builds those from the HF
config's own fields, with the same meaning as TL's name-keyed tables: q/k norms and pre+post
norms, sliding-window layers (``attn_types``/``window_size`` from ``layer_types`` and
``sliding_window``), local/global rotary bases, ``query_pre_attn_scalar`` scaling, soft caps, and
the GELU-tanh gated MLP; the sqrt(d_model) embedding scale is applied by TL's weight conversion.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformerConfig

__all__ = ["CONVERTIBLE", "GEMMA_ARCHITECTURES", "gemma_config", "tl_config"]

GEMMA_ARCHITECTURES = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM")

# Architectures whose HF config and weights TL 3.9 converts (its weight-conversion table),
# plus the Gemma family mapped here. Named in the error for anything else.
CONVERTIBLE = (
    "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM",
    "Qwen3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
    "Phi3ForCausalLM", "PhiForCausalLM", "GPT2LMHeadModel", "GPTNeoXForCausalLM",
    "GPTJForCausalLM", "GPTNeoForCausalLM", "OPTForCausalLM", "BloomForCausalLM",
    "OlmoForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM", "OlmoeForCausalLM",
    "ApertusForCausalLM",
)

_GEMMA_MODEL_TYPES = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                      "gemma3_text": "Gemma3ForCausalLM"}


def architecture_of(hf: dict[str, Any]) -> str:
    """The HF architecture name of a config dict (``architectures[0]``, else by model_type)."""
    archs = hf.get("architectures") or []
    if archs:
        return archs[0]
    return _GEMMA_MODEL_TYPES.get(hf.get("model_type", ""), hf.get("model_type", "?"))


def _rope(hf: dict[str, Any], layer_type: str | None) -> dict[str, Any]:
    """The rope parameters of one layer type (transformers 5 nests them per layer type)."""
    params = hf.get("rope_parameters") or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    out = dict(params)
    if "rope_theta" not in out and "rope_theta" in hf:
        out["rope_theta"] = hf["rope_theta"]
    scaling = hf.get("rope_scaling")
    if scaling and "rope_type" not in out:
        out.update(scaling)
    return out


def gemma_config(hf: dict[str, Any]) -> dict[str, Any]:
    """TL config fields for a Gemma 1/2/3 (text) HF config dict.

    Raises:
        NotImplementedError: a rope type other than default/linear (TL's HookedTransformer has
            only linear scaling on global layers for Gemma).
    """
    arch = architecture_of(hf)
    n_layers = hf["num_hidden_layers"]
    d_head = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    cfg: dict[str, Any] = {
        "d_model": hf["hidden_size"],
        "d_head": d_head,
        "n_heads": hf["num_attention_heads"],
        "n_key_value_heads": hf["num_key_value_heads"],
        "d_mlp": hf["intermediate_size"],
        "n_layers": n_layers,
        "n_ctx": hf["max_position_embeddings"],
        "eps": hf["rms_norm_eps"],
        "d_vocab": hf["vocab_size"],
        "act_fn": hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh",
        "initializer_range": hf.get("initializer_range", 0.02),
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_dim": d_head,
        "rotary_adjacent_pairs": False,
        "use_attn_scale": True,
        "attn_scale": float(hf.get("query_pre_attn_scalar", d_head)) ** 0.5,
        "gated_mlp": True,
        "final_rms": True,
        "original_architecture": arch,
    }
    if arch == "GemmaForCausalLM":
        cfg["rotary_base"] = _rope(hf, None).get("rope_theta", 10000.0)
        return cfg
    cfg["use_normalization_before_and_after"] = True
    cfg["attn_scores_soft_cap"] = float(hf.get("attn_logit_softcapping") or -1.0)
    cfg["output_logits_soft_cap"] = float(hf.get("final_logit_softcapping") or -1.0)
    layer_types = hf.get("layer_types")
    if layer_types is None:  # older Gemma 2 configs: even layers slide
        layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention"
                       for i in range(n_layers)]
    if len(layer_types) != n_layers:
        raise ValueError(f"layer_types has {len(layer_types)} entries for {n_layers} layers")
    window = hf.get("sliding_window")
    if window and any(t == "sliding_attention" for t in layer_types):
        cfg["use_local_attn"] = True
        cfg["window_size"] = int(window)
        cfg["attn_types"] = ["local" if t == "sliding_attention" else "global"
                             for t in layer_types]
    if arch == "Gemma3ForCausalLM":
        cfg["use_qk_norm"] = True
        glob, local = _rope(hf, "full_attention"), _rope(hf, "sliding_attention")
        for params, where in ((glob, "global"), (local, "sliding")):
            kind = params.get("rope_type", "default")
            if kind not in ("default", "linear") or (kind == "linear" and where == "sliding"):
                raise NotImplementedError(
                    f"Gemma 3 {where} layers use rope type {kind!r}; TransformerLens's "
                    "HookedTransformer supports default rope, and linear scaling on global "
                    "layers only")
        cfg["rotary_base"] = glob.get("rope_theta", 1_000_000.0)
        cfg["rotary_base_local"] = local.get("rope_theta", 10_000.0)
        if glob.get("rope_type") == "linear":
            cfg["rotary_scaling_factor"] = float(glob["factor"])
    else:
        cfg["rotary_base"] = _rope(hf, None).get("rope_theta", 10000.0)
    return cfg


def tl_config(hf: dict[str, Any], *, name: str, fold_ln: bool, default_prepend_bos: bool,
              ) -> HookedTransformerConfig:
    """The float32 CPU ``HookedTransformerConfig`` of a HF config dict.

    Args:
        hf: the HF config as a dict (``config.to_dict()``), quantization fields removed.
        name: recorded as ``model_name``.
        fold_ln: whether norms will be folded (then the config says ``RMSPre``/``LNPre``).
        default_prepend_bos: whether prompts get a BOS token by default.

    Raises:
        NotImplementedError: an architecture TL cannot convert; the message lists those that
            convert.
    """
    arch = architecture_of(hf)
    if arch in GEMMA_ARCHITECTURES:
        d = gemma_config(hf)
        if fold_ln:
            d["normalization_type"] = "RMSPre"
        d.update(model_name=name, init_weights=False, device="cpu", n_devices=1,
                 dtype=torch.float32, default_prepend_bos=default_prepend_bos,
                 tokenizer_name=None)
        return HookedTransformerConfig.from_dict(d)
    from transformer_lens import loading_from_pretrained as loading

    with tempfile.TemporaryDirectory(prefix="fvlens-") as tmp:
        folder = Path(tmp) / "hf_config"  # a fixed name: TL branches on words in the path
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(hf | {"architectures": [arch]}))
        try:
            cfg = loading.get_pretrained_model_config(
                str(folder), hf_cfg=hf, fold_ln=fold_ln, dtype=torch.float32,
                default_prepend_bos=default_prepend_bos, device="cpu",
            )
        except (NotImplementedError, ValueError, KeyError, AttributeError, TypeError) as err:
            raise unsupported(arch, err) from err
    cfg.model_name = name
    cfg.tokenizer_name = None
    return cfg


def unsupported(arch: str, err: BaseException | str) -> NotImplementedError:
    """The error for an architecture fvlens cannot convert, naming those it can."""
    return NotImplementedError(
        f"fvlens cannot convert architecture {arch!r} to a TransformerLens HookedTransformer "
        f"({err}). Architectures that convert: {', '.join(CONVERTIBLE)}."
    )
