"""Tiny random Hugging Face models written to folders (config, weights, tokenizer), offline.

Each family's config is the smallest that still has what the family adds (grouped KV heads,
QKV biases, q/k norms, post-norms, sliding-window layers, soft caps), so a test can load the
folder with ``fvlens.load_model`` and compare against the HF model itself.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["FAMILIES", "tiny_hf_dir", "word_tokenizer"]

VOCAB = 63


def word_tokenizer():
    """A word-level tokenizer over ``w0 … w59`` plus ``<unk> <s> </s>`` (ids 60-62)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(60)} | {"<unk>": 60, "<s>": 61, "</s>": 62}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")


def _config(family: str, **overrides):
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  bos_token_id=61, eos_token_id=62, pad_token_id=62)
    if family == "llama":
        cfg = tf.LlamaConfig(**common, tie_word_embeddings=False)
    elif family == "qwen2":
        cfg = tf.Qwen2Config(**common, tie_word_embeddings=True)
    elif family == "gemma":
        cfg = tf.GemmaConfig(**common, head_dim=8)
    elif family == "gemma2":
        cfg = tf.Gemma2Config(**(common | dict(num_hidden_layers=4)), head_dim=8,
                              sliding_window=4, query_pre_attn_scalar=8,
                              attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    elif family == "gemma3":
        cfg = tf.Gemma3TextConfig(
            **(common | dict(num_hidden_layers=4)), head_dim=8, sliding_window=4,
            query_pre_attn_scalar=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention",
                         "sliding_attention"],
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default",
                                                   "rope_theta": 1e4}})
    else:
        raise ValueError(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


FAMILIES = ("llama", "qwen2", "gemma", "gemma2", "gemma3")


def tiny_hf_dir(path: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """Write a tiny random model of ``family`` to ``path``; norms get random gains so that
    folding them is exercised."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(_config(family, **overrides)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.2)
    hf.save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path
