"""Generation with a steering vector: steer once at the prompt's last position, cached and
uncached paths agree, batches equal single prompts, EOS per row, nothing left on the model."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from conftest import make_tiny

import fvlens.pipeline
from fvlens.generation import (Generation, generate, generate_tokens, restrict_to_prompt,
                               side_by_side)
from fvlens.pipeline import steer_report
from fvlens.hooks import assert_no_hooks
from fvlens.steering import DistributedFV, FunctionVector

# Cached and uncached passes multiply differently shaped matrices: float32 round-off only.
LOGIT_ATOL = 1e-4
PROMPT = "Q: cat\nA:"
BATCH = ["Q: cat\nA:", "Q: the opposite of hot\nA:", "Q: go\nA:"]
N_NEW = 6


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tok_model(request):
    """Tiny models with the tiny BPE tokenizer: rotary+GQA and learned positions."""
    return make_tiny(request.param, tokenizer=True)


def _fv(model, *, layer: int = 1, seed: int = 0) -> FunctionVector:
    g = torch.Generator().manual_seed(seed)
    return FunctionVector(vector=5 * torch.randn(model.cfg.d_model, generator=g), layer=layer)


def _dfv(model, seed: int = 1) -> DistributedFV:
    g = torch.Generator().manual_seed(seed)
    return DistributedFV(heads=((0, 1), (2, 3)),
                         means=5 * torch.randn(2, model.cfg.d_head, generator=g))


def _vectors(model):
    return {"none": None, "fv": _fv(model), "dfv": _dfv(model)}


def _tokens(model, prompt, vector=None, **kw) -> torch.Tensor:
    kw = {"max_new_tokens": N_NEW, "stop_at_eos": False} | kw
    return generate_tokens(model, prompt, vector, **kw).tokens


# --- steering semantics -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["none", "fv", "dfv"])
@pytest.mark.parametrize("batched", [False, True])
def test_cached_and_uncached_give_same_tokens(tok_model, kind, batched):
    vector = _vectors(tok_model)[kind]
    prompt = BATCH if batched else PROMPT
    cached = generate_tokens(tok_model, prompt, vector, max_new_tokens=N_NEW, stop_at_eos=False)
    full = generate_tokens(tok_model, prompt, vector, max_new_tokens=N_NEW, stop_at_eos=False,
                           use_cache=False)
    assert torch.equal(cached.tokens, full.tokens)
    torch.testing.assert_close(cached.logits, full.logits, atol=LOGIT_ATOL, rtol=0)
    assert_no_hooks(tok_model)


def test_vector_changes_the_generation(tiny_tok_model):
    steered = _tokens(tiny_tok_model, BATCH, _fv(tiny_tok_model))
    assert not torch.equal(steered, _tokens(tiny_tok_model, BATCH))


@pytest.mark.parametrize("use_cache", [True, False])
def test_zero_vector_changes_nothing(tiny_tok_model, use_cache):
    base = generate_tokens(tiny_tok_model, BATCH, max_new_tokens=N_NEW, use_cache=use_cache)
    zero = FunctionVector(vector=torch.zeros(tiny_tok_model.cfg.d_model), layer=1)
    for vector, scale in [(zero, 1.0), (_fv(tiny_tok_model), 0.0), (_dfv(tiny_tok_model), 0.0)]:
        out = generate_tokens(tiny_tok_model, BATCH, vector, scale=scale, max_new_tokens=N_NEW,
                              use_cache=use_cache)
        assert torch.equal(out.tokens, base.tokens)
        assert torch.equal(out.logits, base.logits)


def test_vector_acts_through_the_prompt_pass_only(tiny_tok_model):
    """Step 1's logits are the steered prompt's last logits; step 2's are those of an unhooked
    token on top of the steered prompt: the vector sits at column P-1, never at P."""
    model, fv = tiny_tok_model, _fv(tiny_tok_model)
    gen = generate_tokens(model, BATCH, fv, max_new_tokens=2, stop_at_eos=False)
    tokens, mask = gen.prompt_tokens, gen.attention_mask
    n_prompt = tokens.shape[1]
    with torch.no_grad():
        first = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=fv.hooks())[:, -1]
    torch.testing.assert_close(gen.logits[:, 0], first, atol=LOGIT_ATOL, rtol=0)
    assert torch.equal(gen.tokens[:, 0], first.argmax(-1))

    def add_at(pos):
        def hook(x, hook):
            x = x.clone()
            x[:, pos] += fv.vector
            return x
        return hook

    seq = torch.cat([tokens, gen.tokens[:, :1]], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    name = fv.hooks()[0][0]
    with torch.no_grad():
        prompt_only = model.run_with_hooks(seq, attention_mask=full_mask,
                                           fwd_hooks=[(name, add_at(n_prompt - 1))])[:, -1]
        both = model.run_with_hooks(seq, attention_mask=full_mask,
                                    fwd_hooks=[(name, add_at(slice(n_prompt - 1, None)))])[:, -1]
    torch.testing.assert_close(gen.logits[:, 1], prompt_only, atol=LOGIT_ATOL, rtol=0)
    assert (gen.logits[:, 1] - both).abs().max() > 1e-2
    assert_no_hooks(model)


def test_batch_equals_single_prompts(tok_model):
    fv = _fv(tok_model)
    batch = _tokens(tok_model, BATCH, fv)
    for i, prompt in enumerate(BATCH):
        assert torch.equal(batch[i], _tokens(tok_model, prompt, fv)[0])
    texts = generate(tok_model, BATCH, fv, max_new_tokens=N_NEW, stop_at_eos=False)
    assert texts == [generate(tok_model, p, fv, max_new_tokens=N_NEW, stop_at_eos=False)[0]
                     for p in BATCH]


def test_restrict_to_prompt_shows_hooks_the_prompt_part():
    seen = {}

    def grab(x, hook):
        seen[hook] = x.shape
        x[:, -1] += 1  # in place through the view

    def add(x, hook):
        return x + 2

    x = torch.zeros(2, 5, 3)
    (_, fn), = restrict_to_prompt([("blocks.0.hook_resid_post", grab)], 3)
    assert fn(x, hook="a") is None and seen["a"] == (2, 3, 3)
    assert x[:, 2].eq(1).all() and x[:, 3:].eq(0).all() and x[:, :2].eq(0).all()
    (_, fn), = restrict_to_prompt([("blocks.0.hook_resid_post", add)], 3)
    y = fn(torch.zeros(2, 5, 3), hook=None)
    assert y[:, :3].eq(2).all() and y[:, 3:].eq(0).all()
    (_, fn), = restrict_to_prompt([("blocks.0.attn.hook_pattern", add)], 3)
    y = fn(torch.zeros(2, 4, 5, 5), hook=None)
    assert y[:, :, :3, :3].eq(2).all() and y.sum() == 2 * 2 * 4 * 9


# --- decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize("use_cache", [True, False])
def test_stops_each_row_at_eos(tiny_tok_model, use_cache):
    """Make the 3rd token row 0 generates the EOS: row 0 stops there, the others go on."""
    base = _tokens(tiny_tok_model, BATCH)
    stop = int(base[0, 2])
    model = copy.copy(tiny_tok_model)  # shares weights and hooks; own tokenizer attribute
    model.tokenizer = copy.deepcopy(tiny_tok_model.tokenizer)
    model.tokenizer.eos_token = model.tokenizer.convert_ids_to_tokens(stop)
    assert model.tokenizer.eos_token_id == stop
    gen = generate_tokens(model, BATCH, max_new_tokens=N_NEW, use_cache=use_cache)
    texts = gen.continuations(model)
    for i in range(len(BATCH)):
        row = base[i].tolist()
        cut = row.index(stop) if stop in row else len(row)
        assert texts[i] == model.tokenizer.decode(row[:cut])
        assert bool(gen.finished[i]) == (stop in row)
        assert gen.tokens[i, cut:].eq(stop).all()
    assert texts[0] == model.tokenizer.decode(base[0, :2].tolist())
    assert generate(model, BATCH, max_new_tokens=N_NEW, use_cache=use_cache) == texts


def test_sampling_is_seeded(tiny_tok_model):
    kw = dict(max_new_tokens=N_NEW, do_sample=True, temperature=2.0, stop_at_eos=False)
    a = _tokens(tiny_tok_model, BATCH, seed=3, **kw)
    assert torch.equal(a, _tokens(tiny_tok_model, BATCH, seed=3, **kw))
    assert not torch.equal(a, _tokens(tiny_tok_model, BATCH, seed=4, **kw))
    assert not torch.equal(a, _tokens(tiny_tok_model, BATCH))


def test_str_prompt_returns_one_continuation(tiny_tok_model):
    out = generate(tiny_tok_model, PROMPT, max_new_tokens=3, stop_at_eos=False)
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str) and out[0]
    empty = generate_tokens(tiny_tok_model, BATCH, max_new_tokens=0)
    assert isinstance(empty, Generation) and empty.tokens.shape == (3, 0)


# --- errors and hygiene -------------------------------------------------------------------


def test_bad_arguments_say_what_to_do(tiny_tok_model):
    m = tiny_tok_model
    with pytest.raises(ValueError, match="FunctionVector only"):
        generate(m, PROMPT, _dfv(m), layer=1)
    with pytest.raises(ValueError, match="inside your hook list"):
        generate(m, PROMPT, [], scale=2.0)
    with pytest.raises(ValueError, match="unknown hook point"):
        generate(m, PROMPT, [("blocks.9.hook_resid_post", lambda x, hook: x)])
    with pytest.raises(ValueError, match="context"):
        generate(m, PROMPT, max_new_tokens=m.cfg.n_ctx)
    with pytest.raises(ValueError, match="temperature"):
        generate(m, PROMPT, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="no injection layer"):
        generate(m, PROMPT, FunctionVector(vector=torch.zeros(m.cfg.d_model)))
    assert_no_hooks(m)


@pytest.mark.parametrize("use_cache", [True, False])
def test_no_hooks_left_even_when_a_hook_fails(tiny_tok_model, use_cache):
    calls = []

    def boom(x, hook):
        calls.append(1)
        if len(calls) > 1 or use_cache:
            raise RuntimeError("boom")

    generate(tiny_tok_model, BATCH, _fv(tiny_tok_model), max_new_tokens=3, use_cache=use_cache)
    assert_no_hooks(tiny_tok_model)
    with pytest.raises(RuntimeError, match="boom"):
        generate(tiny_tok_model, BATCH, [("blocks.0.hook_resid_post", boom)], max_new_tokens=3,
                 stop_at_eos=False, use_cache=use_cache)
    assert_no_hooks(tiny_tok_model)


def test_side_by_side(tiny_tok_model):
    fv = _fv(tiny_tok_model)
    out = side_by_side(tiny_tok_model, PROMPT, fv, max_new_tokens=N_NEW, scale=2.0)
    assert set(out) == {"prompt", "unsteered", "steered"} and out["prompt"] == PROMPT
    assert out["unsteered"] == generate(tiny_tok_model, PROMPT, max_new_tokens=N_NEW)[0]
    assert out["steered"] == generate(tiny_tok_model, PROMPT, fv, scale=2.0,
                                      max_new_tokens=N_NEW)[0]
    zero = side_by_side(tiny_tok_model, PROMPT, fv, max_new_tokens=N_NEW, scale=0.0)
    assert zero["steered"] == zero["unsteered"]


def test_steer_report_uses_extract_vectors(tiny_tok_model, monkeypatch):
    """The plumbing, against the documented ``extract_vectors`` API (a stand-in module)."""
    fv, dfv, calls = _fv(tiny_tok_model).with_layer(2), _dfv(tiny_tok_model), []

    def extract_vectors(model, task, *, select=("aie",), k=20, seed=0, **config):
        calls.append((task, select, k, seed, config))
        return types.SimpleNamespace(fv={"aie": fv}, dfv={"aie": dfv}, dfv_scale={"aie": 2.0})

    monkeypatch.setattr(fvlens.pipeline, "extract_vectors", extract_vectors)
    rep = steer_report(tiny_tok_model, PROMPT, task="antonym", k=4, max_new_tokens=N_NEW)
    assert calls == [("antonym", ("aie",), 4, 0, {"inject": ("fv",)})]
    assert rep["layer"] == 2 and rep["inject"] == "fv" and rep["scale"] == 1.0
    assert rep["steered"] == generate(tiny_tok_model, PROMPT, fv, max_new_tokens=N_NEW)[0]
    rep = steer_report(tiny_tok_model, PROMPT, task="antonym", inject="dfv", max_new_tokens=2)
    assert rep["layer"] is None and rep["scale"] == 2.0 and rep["heads"] == [[0, 1], [2, 3]]
    assert rep["steered"] == generate(tiny_tok_model, PROMPT, dfv, scale=2.0, max_new_tokens=2)[0]
    with pytest.raises(ValueError, match="choose one of"):
        steer_report(tiny_tok_model, PROMPT, task="antonym", inject="both")
    with pytest.raises(ValueError, match="have \\['aie'\\]"):
        steer_report(tiny_tok_model, PROMPT, task="antonym", select="attnlrp")


# --- the embedded model -------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_model_generates_deterministically(smollm):
    out = generate(smollm, "Q: cat\nA:", None, max_new_tokens=5)
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str)
    assert out == generate(smollm, "Q: cat\nA:", None, max_new_tokens=5)
    assert out == generate(smollm, "Q: cat\nA:", None, max_new_tokens=5, use_cache=False)
    assert_no_hooks(smollm)
