"""Tiny seeded models of every architecture family fvlens supports (no download).

Each entry copies the *settings* TransformerLens 3.9 gives that architecture
(``transformer_lens/loading_from_pretrained.py``: ``convert_hf_model_config`` and the named
Gemma branches) at toy sizes. Values that only make sense at scale are shrunk so that the
feature still acts on a tiny random model: sliding windows of 4 tokens (prompts are 5–9
tokens), soft-caps of a few units (tiny random scores and logits are O(1), so TL's 50 / 30
would leave tanh linear). Weights are TL's random init, then every bias set to N(0, 0.1) and
every norm weight to 1 + N(0, 0.1), so bias and norm handling is exercised in every family
(real Llama/Gemma checkpoints have zero biases; the code must not rely on it).
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from fvlens.batch import PromptBatch
from fvlens.tasks import Pair

__all__ = ["FAMILIES", "family_config", "make_family", "padded_batch"]

_COMMON = dict(n_layers=3, d_model=32, d_head=8, n_heads=4, n_ctx=64, d_vocab=50, seed=0)
_WINDOW = 4  # sliding-window layers see 4 tokens: prompts of 5-9 tokens are cut

_RMS_GATED = dict(normalization_type="RMS", positional_embedding_type="rotary",
                  rotary_adjacent_pairs=False, gated_mlp=True, final_rms=True, act_fn="silu")

# family -> HookedTransformerConfig settings (as TL 3.9 sets them for that architecture)
FAMILIES: dict[str, dict] = {
    # SmolLM2 (LlamaForCausalLM branch): RMSNorm, rotary over the whole head, gated SiLU, GQA.
    "llama": dict(_RMS_GATED, original_architecture="LlamaForCausalLM", d_mlp=48,
                  rotary_dim=8, rotary_base=100000, n_key_value_heads=2),
    # Qwen2ForCausalLM: as Llama plus q/k/v biases (HF has them; all biases are random here).
    "qwen2": dict(_RMS_GATED, original_architecture="Qwen2ForCausalLM", d_mlp=48,
                  rotary_dim=8, rotary_base=1000000, n_key_value_heads=2,
                  default_prepend_bos=False),
    # Qwen3ForCausalLM: RMS q/k norms over d_head; head_dim decoupled (n_heads*d_head != d_model).
    "qwen3": dict(_RMS_GATED, original_architecture="Qwen3ForCausalLM", d_mlp=48, d_head=16,
                  rotary_dim=16, rotary_base=1000000, n_key_value_heads=2, use_qk_norm=True,
                  default_prepend_bos=False),
    # GemmaForCausalLM (google/gemma-2b branch): GELU gate, multi-query (1 KV head).
    "gemma": dict(_RMS_GATED, original_architecture="GemmaForCausalLM", act_fn="gelu",
                  d_mlp=64, rotary_dim=8, rotary_base=10000, n_key_value_heads=1),
    # Gemma2ForCausalLM (google/gemma-2-2b branch): local/global alternation (even layers local),
    # tanh soft-caps on attention scores and output logits, norms before and after each sublayer.
    "gemma2": dict(_RMS_GATED, original_architecture="Gemma2ForCausalLM",
                   act_fn="gelu_pytorch_tanh", d_mlp=64, rotary_dim=8, rotary_base=10000.0,
                   n_key_value_heads=2, use_local_attn=True, window_size=_WINDOW,
                   attn_types=["local", "global", "local"], attn_scores_soft_cap=1.0,
                   output_logits_soft_cap=1.0, use_normalization_before_and_after=True),
    # Gemma3ForCausalLM (google/gemma-3-270m branch): q/k norms, post-norms, 5 local : 1 global
    # (here 2 : 1), a different rope base for local layers, MQA, decoupled head_dim.
    "gemma3": dict(_RMS_GATED, original_architecture="Gemma3ForCausalLM",
                   act_fn="gelu_pytorch_tanh", d_mlp=64, d_head=16, rotary_dim=16,
                   rotary_base=1000000, rotary_base_local=10000, n_key_value_heads=1,
                   use_normalization_before_and_after=True, use_qk_norm=True,
                   use_local_attn=True, window_size=_WINDOW,
                   attn_types=["local", "local", "global"]),
    # MistralForCausalLM: a sliding window on every layer, GQA.
    "mistral": dict(_RMS_GATED, original_architecture="MistralForCausalLM", d_mlp=48,
                    rotary_dim=8, rotary_base=1000000.0, n_key_value_heads=2,
                    use_local_attn=True, window_size=_WINDOW, attn_types=["local"] * 3),
    # Phi3ForCausalLM: Llama-like (TL splits the fused qkv / gate_up weights at conversion,
    # rotary over the whole head), sliding window on every layer, full multi-head attention.
    "phi3": dict(_RMS_GATED, original_architecture="Phi3ForCausalLM", d_mlp=48, rotary_dim=8,
                 rotary_base=10000.0, use_local_attn=True, window_size=_WINDOW,
                 attn_types=["local"] * 3, parallel_attn_mlp=False),
    # PhiForCausalLM (Phi-1/2): LayerNorm, parallel attention + MLP, partial rotary.
    "phi": dict(original_architecture="PhiForCausalLM", normalization_type="LN",
                positional_embedding_type="rotary", rotary_dim=4, rotary_base=10000.0,
                act_fn="gelu_new", d_mlp=64, parallel_attn_mlp=True, default_prepend_bos=False),
    # GPT2LMHeadModel: LayerNorm, learned absolute positions, biases everywhere.
    "gpt2": dict(original_architecture="GPT2LMHeadModel", normalization_type="LN",
                 positional_embedding_type="standard", act_fn="gelu_new", d_mlp=64),
    # GPTNeoXForCausalLM (Pythia): LayerNorm, parallel attention + MLP, rotary on a quarter of
    # each head (rotary_pct 0.25), rotate-half pairing.
    "gptneox": dict(original_architecture="GPTNeoXForCausalLM", normalization_type="LN",
                    positional_embedding_type="rotary", rotary_adjacent_pairs=False,
                    d_head=16, d_model=64, rotary_dim=4, act_fn="gelu", d_mlp=96,
                    parallel_attn_mlp=True, default_prepend_bos=False),
    # GPTJForCausalLM: parallel attention + MLP, partial rotary on adjacent pairs.
    "gptj": dict(original_architecture="GPTJForCausalLM", normalization_type="LN",
                 positional_embedding_type="rotary", rotary_adjacent_pairs=True, rotary_dim=4,
                 act_fn="gelu_new", d_mlp=64, parallel_attn_mlp=True),
}

# Gemma scales the token embeddings by sqrt(d_model); TL folds that into W_E at conversion.
_SCALED_EMBEDDINGS = {"gemma", "gemma2", "gemma3"}

_BIASES = ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U", ".b")
_NORM_WEIGHTS = (".w",)


def family_config(name: str, dtype: torch.dtype = torch.float32) -> HookedTransformerConfig:
    """The tiny config of family ``name`` (one of ``FAMILIES``)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {sorted(FAMILIES)}")
    return HookedTransformerConfig(**(_COMMON | FAMILIES[name] | {"dtype": dtype}))


def make_family(name: str, dtype: torch.dtype = torch.float32, *, fold_ln: bool = False
                ) -> HookedTransformer:
    """A seeded tiny random model of family ``name``, in eval mode, parameters frozen.

    With ``fold_ln`` the norm weights and biases are folded into the next weights the way
    ``fvlens.load_model`` processes real checkpoints (``fvlens.Processing`` defaults:
    LN -> LNPre, RMS -> RMSPre; q/k norms and post-norms keep their weights).
    """
    torch.manual_seed(0)
    model = HookedTransformer(family_config(name, dtype))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype)
            if pname.endswith(_BIASES):
                p.copy_(noise)
            elif pname.endswith(_NORM_WEIGHTS):
                p.copy_(1.0 + noise)
        if name in _SCALED_EMBEDDINGS:
            model.embed.W_E.mul_(model.cfg.d_model ** 0.5)
    if fold_ln:
        model.load_and_process_state_dict(model.state_dict(), fold_ln=True,
                                          center_writing_weights=False, center_unembed=False,
                                          fold_value_biases=False)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def padded_batch(lengths=(7, 5, 9), *, vocab: int = 50, seed: int = 0) -> PromptBatch:
    """Random left-padded prompts of the given lengths, with random targets."""
    g = torch.Generator().manual_seed(seed)
    n, width = len(lengths), max(lengths)
    tokens = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, length in enumerate(lengths):
        tokens[i, width - length:] = torch.randint(1, vocab, (length,), generator=g)
        mask[i, width - length:] = 1
    return PromptBatch(tokens=tokens, attention_mask=mask,
                       targets=torch.randint(1, vocab, (n,), generator=g),
                       texts=("",) * n, queries=(Pair(input="a", output="b"),) * n,
                       frame_positions=((),) * n, context_positions=((),) * n, kind="icl")
