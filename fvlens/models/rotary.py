"""Rotary tables computed the way Hugging Face computes them, for converted models.

TransformerLens builds a layer's rotary angles as ``pos / base^(2i/d)``; Hugging Face (the
reference implementation every converted model is checked against) as
``pos * (1 / base^(2i/d))`` in float32. The two round differently by about one ulp of the angle,
and the angle grows with the position: at positions 500-1100 the sin/cos tables differ by up to
6e-5, which moved Gemma 3 270M's log-probs by up to 4.9e-4 against HF (1.5e-4 below 512
tokens), growing with position. With HF's formula the gap is 7e-5 at every position
(2-core CPU, float32, 1,101 tokens); with exact (float64) angles it is 1.1e-3, because HF's own
tables carry the float32 rounding. So the tables follow HF's formula; this is not a sliding-window
effect (the window masks agree exactly: tests/test_models_convert.py).

The tables cover all ``n_ctx`` positions (TransformerLens starts with 2,048 rows and extends
them with its own formula when a longer input comes; one shared table per attention type keeps
the full length cheap: 16 MB for Qwen2.5-0.5B, 128 MB for Gemma 3 270M at 32k positions).

Only plain rotary is rewritten (default rope, optionally TL's linear scaling of global layers);
NTK-by-parts, YaRN, dynamic NTK and GPT-J's adjacent pairs keep TransformerLens's tables.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformerConfig

__all__ = ["hf_rotary_applies", "hf_rotary_tables", "use_hf_rotary"]


def hf_rotary_applies(cfg: HookedTransformerConfig) -> bool:
    """Whether the config's rotary embedding is the plain kind HF's default formula covers."""
    return (cfg.positional_embedding_type == "rotary" and not cfg.rotary_adjacent_pairs
            and not cfg.use_NTK_by_parts_rope and not cfg.use_yarn_rope
            and not cfg.use_dynamic_ntk_rope and cfg.rotary_dim is not None)


def hf_rotary_tables(cfg: HookedTransformerConfig, attn_type: str,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sin, cos)``, each ``[n_ctx, rotary_dim]`` float32, for one attention type."""
    dim = cfg.rotary_dim
    base = cfg.rotary_base_local if attn_type == "local" and cfg.rotary_base_local else \
        cfg.rotary_base
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if cfg.rotary_scaling_factor != 1.0 and attn_type != "local":
        inv_freq = inv_freq / cfg.rotary_scaling_factor
    angles = torch.arange(cfg.n_ctx, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.sin(), angles.cos()


def use_hf_rotary(cfg: HookedTransformerConfig,
                  state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every layer's ``rotary_sin``/``rotary_cos`` in ``state`` by HF's tables (one
    shared pair per attention type), when ``hf_rotary_applies``. Returns ``state``."""
    if not hf_rotary_applies(cfg):
        return state
    tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in range(cfg.n_layers):
        kind = cfg.attn_types[layer] if cfg.use_local_attn and cfg.attn_types else "global"
        sin_key = f"blocks.{layer}.attn.rotary_sin"
        if sin_key not in state:
            continue
        if kind not in tables:
            tables[kind] = hf_rotary_tables(cfg, kind)
        sin, cos = tables[kind]
        if state[sin_key].shape[1:] != sin.shape[1:]:
            raise ValueError(f"{sin_key} has shape {tuple(state[sin_key].shape)}, HF's table "
                             f"{tuple(sin.shape)}")
        state[sin_key], state[f"blocks.{layer}.attn.rotary_cos"] = sin, cos
    return state
