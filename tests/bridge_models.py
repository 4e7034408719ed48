"""Tiny random Hugging Face models built in code (no download), booted into TransformerBridges.

The same families the bridge must serve: Llama (RMSNorm, gated SiLU, rotary, GQA), Qwen2
(+ q/k/v biases, tied embeddings), Gemma 3 text (q/k norms, post-norms, ``1 + w`` gains,
sliding-window layers narrower than the prompts, output soft-cap) and GPT-2 (LayerNorm with
biases, learned positions). Norm gains get ``1 + N(0, 0.3)`` and biases ``N(0, 0.1)``, so norm
and bias handling is exercised. The tokenizer is conftest's tiny BPE tokenizer.
"""

from __future__ import annotations

import torch

from conftest import tiny_tokenizer
from fvlens.batch import PromptBatch
from fvlens.tasks import Pair

__all__ = ["FAMILIES", "tiny_hf", "tiny_bridge", "padded_batch", "PROCESSING"]

FAMILIES = ("llama", "qwen2", "gemma3", "gpt2")
PROCESSING = {"fold_ln": True, "center_writing_weights": False, "center_unembed": False,
              "fold_value_biases": False}  # fvlens.Processing() defaults
WINDOW = 4  # Gemma 3's sliding layers see 4 tokens: the test prompts (5-9 tokens) are cut


def tiny_hf(family: str, seed: int = 0):
    """A seeded 3-layer random HF causal LM of ``family`` (eval mode)."""
    import transformers as tf

    tok = tiny_tokenizer()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=48,
                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64, **ids)
    torch.manual_seed(seed)
    if family == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common, tie_word_embeddings=False))
    elif family == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, tie_word_embeddings=True))
    elif family == "gemma3":
        model = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
            **common, head_dim=8, sliding_window=WINDOW, query_pre_attn_scalar=8,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            final_logit_softcapping=3.0))
    elif family == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=3,
                                                 n_head=4, n_positions=64, **ids))
    else:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if ("norm" in name or ".ln_" in name) and name.endswith("weight"):
                p.add_(0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
    model.config.architectures = [type(model).__name__]
    return model.eval()


def tiny_bridge(family: str, *, processing: dict | None = None, seed: int = 0):
    """``tiny_hf(family)`` booted as fvlens boots every bridge (``boot_bridge``)."""
    from fvlens.models.bridge import boot_bridge

    bridge, _ = boot_bridge(tiny_hf(family, seed), tiny_tokenizer(), name=f"tiny-{family}",
                            processing=PROCESSING if processing is None else processing,
                            adds_bos=False)
    for p in bridge.parameters():
        p.requires_grad_(False)
    return bridge


def padded_batch(vocab: int, lengths=(7, 5, 9), *, seed: int = 0) -> PromptBatch:
    """Random left-padded prompts of the given lengths, with random targets (pad id 0)."""
    g = torch.Generator().manual_seed(seed)
    n, width = len(lengths), max(lengths)
    tokens = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, length in enumerate(lengths):
        tokens[i, width - length:] = torch.randint(2, vocab, (length,), generator=g)
        mask[i, width - length:] = 1
    return PromptBatch(tokens=tokens, attention_mask=mask,
                       targets=torch.randint(2, vocab, (n,), generator=g),
                       texts=("",) * n, queries=(Pair(input="a", output="b"),) * n,
                       frame_positions=((),) * n, context_positions=((),) * n, kind="icl")
