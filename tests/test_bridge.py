"""fvlens on a TransformerBridge: tiny random Hugging Face models of four families
(tests/bridge_models.py) booted the way ``load_model(backend="bridge")`` boots them.

Backend-agnostic behaviour, checked against the bridge's own full forward pass: ``run_to`` is a
residual and never runs the block it stops at, ``resume`` runs no lower block, the prefix
cache plus the last token equals the full forward, AttnLRP leaves the forward bit-exact and
conserves relevance through the final norm, the fast AIE path equals the reference, FV and DFV
act on the last position of a padded batch and leave no hook. Marked ``bridge``: they run under
transformer-lens 3.9 (whose bridge this is too) and 4.x (the CI job of .ci/run).
"""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch

from bridge_models import FAMILIES, PROCESSING, padded_batch, tiny_bridge, tiny_hf
from conftest import tiny_tokenizer
from fvlens.backend import (hook_names, hook_points, input_hook_names, is_bridge, kv_forward,
                            positions, repeat_kv)
from fvlens.forward import final_logits, forward_last, resume, run_to
from fvlens.heads.aie import indirect_effects, patch_head_hooks
from fvlens.hooks import assert_no_hooks, count_hooks, hook_name
from fvlens.attnlrp.relevance import _trace, explain_batch
from fvlens.attnlrp.rules import attnlrp_hooks

pytestmark = pytest.mark.bridge

# The bridge runs HF's eager attention (the HF model before boot may run SDPA) and folds the
# norm gains into the next weights (fvlens's Processing): float32 rounding only.
HF_ATOL = 1e-5
# Final norm + unembedding of fvlens (final_logits) vs the same inside HF's forward, or the
# same blocks run on a different number of rows: float32 rounding only (measured <= 2e-7).
ROUND_ATOL = 1e-6
# A prefix in HF's key/value cache + the last token vs the full forward (different kernels;
# measured <= 2e-7 on these models).
KV_ATOL = 1e-5
# Fast vs reference AIE: the same probabilities in another batch shape (measured <= 5e-10;
# the tiny models' target probabilities are ~1/600 and their effects >= 1e-5).
AIE_ATOL = 1e-8
# Relevance identities in float32 (sums over 32 features): round-off only.
CONSERVATION_RTOL = 1e-5
BATCH_ATOL = 1e-5  # a prompt in a padded batch vs alone (other reductions)

NAMES = list(FAMILIES)


@functools.lru_cache(maxsize=None)
def bridge(name: str):
    """Read-only shared bridges (each test leaves them unhooked: asserted where hooks run)."""
    return tiny_bridge(name)


def _batch(model):
    return padded_batch(model.cfg.d_vocab)


def _record(model, names, tokens, mask):
    """Activations at ``names`` in one unhooked full forward; also returns its logits."""
    acts = {}

    def keep(name):
        def fn(x, hook):
            acts[name] = x.detach().clone()

        return fn

    with torch.no_grad(), model.hooks(fwd_hooks=[(n, keep(n)) for n in names]):
        logits = model(tokens, attention_mask=mask)
    return acts, logits


@pytest.mark.parametrize("name", NAMES)
def test_boot_keeps_the_hf_models_logits(name):
    batch = _batch(bridge(name))
    hf = tiny_hf(name)
    with torch.no_grad():  # positions counted from each row's first real token, as TL does
        want = hf(batch.tokens, attention_mask=batch.attention_mask,
                  position_ids=positions(batch.attention_mask)).logits[:, -1]
    from fvlens.models.bridge import boot_bridge

    model, _ = boot_bridge(hf, tiny_tokenizer(), name=name, processing=PROCESSING,
                           adds_bos=False)
    assert is_bridge(model) and not model.cfg.default_prepend_bos
    with torch.no_grad():
        got = model(batch.tokens, attention_mask=batch.attention_mask)[:, -1]
    torch.testing.assert_close(got, want, atol=HF_ATOL, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_hook_points_counted_once_and_filed_by_the_name_asked_for(name):
    model = bridge(name)
    points = hook_points(model)
    assert len(points) == len({id(p) for p in points}) < len(hook_names(model))  # aliases
    seen = {}

    def spy(x, hook):
        seen[hook.name] = x

    resid_pre = hook_name("resid_pre", 0)
    hooks = [(resid_pre, spy), ("blocks.0.hook_in", spy)]  # one hook point, two names
    with model.hooks(fwd_hooks=hooks):
        assert count_hooks(model) == 2
        model(_batch(model).tokens)
    assert resid_pre not in seen and list(seen) == ["blocks.0.hook_in"]  # the trap
    assert_no_hooks(model)


@pytest.mark.parametrize("name", NAMES)
def test_input_hooks_sum_to_the_first_residual(name):
    model = bridge(name)
    inputs = input_hook_names(model)
    assert inputs == (["hook_embed", "hook_pos_embed"] if name == "gpt2" else ["hook_embed"])
    batch = _batch(model)
    acts, _ = _record(model, inputs + [hook_name("resid_pre", 0)], batch.tokens,
                      batch.attention_mask)
    assert set(acts) == set(inputs) | {hook_name("resid_pre", 0)}  # every input hook fired
    total = sum(acts[n] for n in inputs)
    torch.testing.assert_close(total, acts[hook_name("resid_pre", 0)], atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_run_to_returns_the_residual_and_never_runs_the_next_block(name):
    model = bridge(name)
    n = model.cfg.n_layers
    batch = _batch(model)
    names = [hook_name("resid_post", i) for i in range(n)] + ["ln_final.hook_in"]
    acts, _ = _record(model, names, batch.tokens, batch.attention_mask)
    for layer in (1, 2, n):
        fired = []
        spies = [(f"blocks.{layer}.{h}", lambda x, hook: fired.append(hook.name))
                 for h in ("hook_resid_pre", "attn.hook_z")] if layer < n else \
            [("ln_final.hook_in", lambda x, hook: fired.append(hook.name))]
        with torch.no_grad(), model.hooks(fwd_hooks=spies):
            got = run_to(model, batch.tokens, batch.attention_mask, layer=layer)
        want = acts["ln_final.hook_in"] if layer == n else acts[hook_name("resid_post",
                                                                          layer - 1)]
        assert got.shape == want.shape == (*batch.tokens.shape, model.cfg.d_model)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        assert fired == [], (layer, fired)
    assert_no_hooks(model)


@pytest.mark.parametrize("name", NAMES)
def test_resume_runs_only_the_blocks_asked_for(name):
    model = bridge(name)
    n = model.cfg.n_layers
    batch = _batch(model)
    names = [hook_name("resid_post", i) for i in range(n)] + ["ln_final.hook_in"]
    acts, logits = _record(model, names, batch.tokens, batch.attention_mask)
    layers = model.original_model.base_model
    for start in range(1, n):
        calls = {i: 0 for i in range(n)}

        def count(x, hook):
            calls[hook.layer()] += 1

        spies = [(hook_name("z", i), count) for i in range(n)]
        resid = acts[hook_name("resid_post", start - 1)]
        with torch.no_grad(), model.hooks(fwd_hooks=spies):
            out = resume(model, resid, start=start, attention_mask=batch.attention_mask)
            part = resume(model, resid, start=start, stop=start + 1,
                          attention_mask=batch.attention_mask)
        assert calls == {i: (2 if i == start else 1 if i > start else 0) for i in range(n)}
        torch.testing.assert_close(out, acts["ln_final.hook_in"], atol=ROUND_ATOL, rtol=0)
        torch.testing.assert_close(part, acts[hook_name("resid_post", start)],
                                   atol=ROUND_ATOL, rtol=0)
        torch.testing.assert_close(final_logits(model, out[:, -1]), logits[:, -1],
                                   atol=ROUND_ATOL, rtol=0)
    assert len(getattr(layers, "layers", getattr(layers, "h", None))) == n  # restored
    assert_no_hooks(model)


@pytest.mark.parametrize("name", NAMES)
def test_forward_last_equals_the_models_own_forward(name):
    model = bridge(name)
    batch = _batch(model)
    with torch.no_grad():
        want = model(batch.tokens, attention_mask=batch.attention_mask)[:, -1]
        got = forward_last(model, batch.tokens, batch.attention_mask)
    torch.testing.assert_close(got, want, atol=ROUND_ATOL, rtol=0)  # incl. Gemma's soft-cap


@pytest.mark.parametrize("name", NAMES)
def test_prefix_cache_plus_last_token_equals_the_full_forward(name):
    """Catches transformers 5.24's renamed cache keyword (fvlens.backend.install_kv_shim)."""
    model = bridge(name)
    batch = _batch(model)
    tokens, mask = batch.tokens, batch.attention_mask
    with torch.no_grad():
        full = model(tokens, attention_mask=mask)[:, -1]
        _, prefix = kv_forward(model, tokens[:, :-1], mask[:, :-1])
        for kv in (repeat_kv(prefix, 1), repeat_kv(prefix, 1)):  # a copy can be reused
            step, _ = kv_forward(model, tokens[:, -1:], mask[:, -1:], kv)
            torch.testing.assert_close(step[:, -1], full, atol=KV_ATOL, rtol=0)
        assert (full - model(tokens[:, -1:], attention_mask=mask[:, -1:])[:, -1]).abs().max() \
            > 100 * KV_ATOL  # the prefix matters: without it the logits differ


@pytest.mark.parametrize("name", NAMES)
def test_attnlrp_rules_leave_the_forward_unchanged(name):
    model = bridge(name)
    batch = _batch(model)
    with torch.no_grad():
        plain = model(batch.tokens, attention_mask=batch.attention_mask)
        with model.hooks(fwd_hooks=attnlrp_hooks(model)):
            ruled = model(batch.tokens, attention_mask=batch.attention_mask)
    assert torch.equal(plain, ruled)
    assert_no_hooks(model)


@pytest.mark.parametrize("name", NAMES)
def test_norm_rule_conserves_relevance_through_the_final_norm(name):
    """ΣR at ln_final's input = Σ (y - b)·∂logit/∂y at its output (the bias keeps its share;
    RMSNorm has none, so there ΣR is the explained logit itself)."""
    model = bridge(name)
    batch = _batch(model)
    logits, acts, grads = _trace(model, batch.tokens, batch.targets,
                                 ["ln_final.hook_in", "ln_final.hook_out"],
                                 batch.attention_mask, [])
    r_in = (acts["ln_final.hook_in"] * grads["ln_final.hook_in"])[:, -1].sum(-1)
    comp = model.ln_final.original_component
    bias = getattr(comp, "bias", None) if name == "gpt2" else None
    y = acts["ln_final.hook_out"] - (bias if bias is not None else 0)
    want = (y * grads["ln_final.hook_out"])[:, -1].sum(-1)
    torch.testing.assert_close(r_in, want, rtol=CONSERVATION_RTOL, atol=1e-7)
    if name != "gpt2":
        torch.testing.assert_close(r_in, logits, rtol=CONSERVATION_RTOL, atol=1e-7)
    assert_no_hooks(model)


@pytest.mark.parametrize("name", NAMES)
def test_explain_batch_on_a_padded_batch_equals_each_prompt_alone(name):
    model = bridge(name)
    batch = _batch(model)
    rel = explain_batch(model, batch.tokens, batch.targets, attention_mask=batch.attention_mask)
    assert torch.isfinite(rel.tokens).all() and torch.isfinite(rel.heads).all()
    for i in range(len(batch)):
        keep = batch.attention_mask[i].bool()
        alone = explain_batch(model, batch.tokens[i:i + 1, keep], batch.targets[i:i + 1])
        torch.testing.assert_close(rel.tokens[i, keep], alone.tokens[0], atol=BATCH_ATOL, rtol=0)
        torch.testing.assert_close(rel.heads[i], alone.heads[0], atol=BATCH_ATOL, rtol=0)
        assert (rel.tokens[i, ~keep] == 0).all()  # padding is no source of relevance
    # the uniform rule at hook_z: a head's relevance splits evenly into pattern and values
    assert rel.heads.abs().max() > 0
    torch.testing.assert_close(rel.attention.sum(-1), rel.heads / 2, atol=1e-6, rtol=1e-5)
    assert_no_hooks(model)


@pytest.mark.parametrize("name", NAMES)
def test_fast_aie_equals_the_reference_on_a_padded_batch(name):
    model = bridge(name)
    batch = _batch(model)
    g = torch.Generator().manual_seed(3)
    mean_z = 3 * torch.randn(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head,
                             generator=g)
    fast = indirect_effects(model, batch, mean_z, method="fast", batch_size=2, progress=False)
    ref = indirect_effects(model, batch, mean_z, method="reference", progress=False)
    assert ref.abs().max() > 1e-5  # the patches do move the target probability
    torch.testing.assert_close(fast, ref, atol=AIE_ATOL, rtol=0)
    # and one (layer, head) by hand: a full forward with the head patched
    with torch.no_grad(), model.hooks(fwd_hooks=patch_head_hooks(1, 2, mean_z[1, 2])):
        probs = forward_last(model, batch.tokens, batch.attention_mask).softmax(-1)
    base = forward_last(model, batch.tokens, batch.attention_mask).softmax(-1)
    rows = torch.arange(len(batch))
    by_hand = probs[rows, batch.targets] - base[rows, batch.targets]
    torch.testing.assert_close(fast[:, 1, 2], by_hand, atol=AIE_ATOL, rtol=0)
    assert_no_hooks(model)


@pytest.mark.parametrize("name", NAMES)
def test_fv_and_dfv_steer_only_the_last_position_and_sweeps_equal_full_passes(name):
    from fvlens.evaluation import evaluation_from_logits
    from fvlens.injection import ResidualCache
    from fvlens.lastpos import step_cache
    from fvlens.lastpos import steered as steered_on
    from fvlens.steering import DistributedFV, FunctionVector

    model = bridge(name)
    batch = _batch(model)
    g = torch.Generator().manual_seed(4)
    fv = FunctionVector(vector=torch.randn(model.cfg.d_model, generator=g), layer=1)
    heads = ((1, 0), (2, 3))
    dfv = DistributedFV(heads=heads, means=torch.randn(2, model.cfg.d_head, generator=g))
    cache = step_cache(model, batch)  # what fvlens run sweeps on: HF's cache is not TL's
    assert isinstance(cache, ResidualCache)
    with torch.no_grad():
        plain = model(batch.tokens, attention_mask=batch.attention_mask)
    for hooks, start in ((fv.hooks(), 2), (dfv.hooks(), 1)):
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            steered = model(batch.tokens, attention_mask=batch.attention_mask)
        assert torch.equal(steered[:, :-1], plain[:, :-1])  # earlier positions untouched
        assert (steered[:, -1] - plain[:, -1]).abs().max() > 1e-3
        want = evaluation_from_logits(steered[:, -1].float(), batch.targets)
        vec = fv.vector if start == 2 else None
        got = steered_on(model, cache, start=start, vector=vec,
                         fwd_hooks=[] if start == 2 else hooks)
        assert torch.equal(got.ranks, want.ranks)
    torch.testing.assert_close(cache.unsteered.ranks, evaluation_from_logits(
        plain[:, -1].float(), batch.targets).ranks)
    assert_no_hooks(model)


def test_cached_generation_equals_uncached_with_a_steering_vector():
    from fvlens.generation import generate_tokens
    from fvlens.steering import FunctionVector

    model = bridge("llama")
    fv = FunctionVector(vector=torch.randn(model.cfg.d_model,
                                           generator=torch.Generator().manual_seed(5)), layer=1)
    prompts = ["Q: hot\nA: cold\nQ: big\nA:", "Q: up\nA:"]
    runs = [generate_tokens(model, prompts, fv, max_new_tokens=6, stop_at_eos=False,
                            use_cache=c) for c in (True, False)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    torch.testing.assert_close(runs[0].logits, runs[1].logits, atol=KV_ATOL, rtol=0)
    assert_no_hooks(model)


# --- loading -------------------------------------------------------------------------------


# Modules that convert checkpoints for HookedTransformer and may fail to import where
# TransformerLens has none (TL 4); fvlens.models must still import and load a bridge there.
HOOKED_ONLY: set[str] = set()


def test_every_module_imports_on_this_transformer_lens():
    """No module needs HookedTransformer to import (TransformerLens 4 has none)."""
    import importlib
    import pkgutil

    import fvlens
    from fvlens.backend import has_hooked_transformer

    names = [m.name for m in pkgutil.walk_packages(fvlens.__path__, "fvlens.")
             if not m.name.endswith("__main__")]  # that one runs the command line
    assert len(names) > 50
    for name in names:
        if name in HOOKED_ONLY and not has_hooked_transformer():
            continue
        importlib.import_module(name)


def test_the_command_line_takes_a_backend():
    from fvlens.cli import build_parser

    args = build_parser().parse_args(["run", "--backend", "bridge", "--tasks", "capitalize"])
    assert args.backend == "bridge"
    assert build_parser().parse_args(["baseline"]).backend is None  # the default per TL
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--backend", "hookedtransformer"])


def test_results_record_the_backend():
    from fvlens.pipeline import run_settings
    from fvlens.plan import RunConfig

    settings = run_settings(bridge("llama"), RunConfig(tasks=("capitalize",)))
    assert settings["backend"] == "bridge"


def test_backend_choice_and_the_error_that_names_the_fix(monkeypatch):
    from fvlens import backend as be
    from fvlens.models.loader import _backend

    assert _backend(None) == ("hooked" if be.has_hooked_transformer() else "bridge")
    assert _backend("bridge") == "bridge"
    with pytest.raises(ValueError, match="backend must be one of"):
        _backend("hooked-transformer")
    monkeypatch.setattr(be, "has_hooked_transformer", lambda: False)
    assert _backend(None) == "bridge"
    with pytest.raises(ValueError, match=r"backend='bridge'.*transformer-lens==3\.9\.\*"):
        _backend("hooked")


@pytest.mark.parametrize("name", ["qwen2", "gpt2"])  # tied embeddings; learned positions
def test_load_model_boots_a_bridge_from_a_local_folder(tmp_path, name):
    from fvlens.models import load_model

    hf = tiny_hf(name)
    hf.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    batch = _batch(bridge(name))
    with torch.no_grad():
        want = hf(batch.tokens, attention_mask=batch.attention_mask,
                  position_ids=positions(batch.attention_mask)).logits[:, -1]
    model = load_model(tmp_path, backend="bridge", device="cpu", use_cache=False)
    meta = model.fvlens_meta
    assert is_bridge(model) and meta["backend"] == "bridge" and meta["kind"] == "hf_dir"
    assert meta["processing"] == PROCESSING and not model.cfg.default_prepend_bos
    torch.testing.assert_close(forward_last(model, batch.tokens, batch.attention_mask), want,
                               atol=HF_ATOL, rtol=0)


def test_hf_weight_cache_round_trip_and_damage(tmp_path):
    from fvlens.models.bridge import _META, _read, _write
    from fvlens.models.specs import Source

    source = Source(kind="gguf", name="tiny", path=None, key="abc")
    hf = tiny_hf("qwen2")  # tied lm_head: stored once, re-tied on reading
    entry = tmp_path / "hf-tiny"
    _write(entry, hf, tiny_tokenizer(), source)
    model, tok = _read(entry, source)
    tokens = _batch(bridge("qwen2")).tokens
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, hf(tokens).logits)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    with pytest.warns(UserWarning, match="stale"):  # another source: rebuilt
        assert _read(entry, dataclasses.replace(source, key="other")) is None
    assert not entry.exists()
    _write(entry, hf, tiny_tokenizer(), source)
    meta = json.loads((entry / _META).read_text())
    (entry / _META).write_text(json.dumps({**meta, "size": meta["size"] + 1}))
    with pytest.warns(UserWarning, match="unusable"):
        assert _read(entry, source) is None


# --- the bridge against HookedTransformer (TransformerLens 3.x only) -----------------------

# The same HF weights through two implementations (TL's conversion + HookedTransformer, HF's
# modules under the bridge), both fold_ln in float32: round-off only. The bound.
BACKENDS_RTOL = 1e-4


def _relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.skipif(not __import__("fvlens.backend").backend.has_hooked_transformer(),
                    reason="needs HookedTransformer (transformer-lens 3.x)")
@pytest.mark.parametrize("name", ["llama", "qwen2"])  # main's TL conversion of GPT-2 fails
def test_the_bridge_equals_hooked_transformer_on_the_same_weights(tmp_path, name):
    from fvlens.models import load_model

    tiny_hf(name).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    models = {b: load_model(tmp_path, backend=b, device="cpu", use_cache=False)
              for b in ("hooked", "bridge")}
    batch = _batch(models["bridge"])
    g = torch.Generator().manual_seed(3)
    mean_z = 3 * torch.randn(3, 4, 8, generator=g)
    out = {}
    for b, model in models.items():
        for p in model.parameters():
            p.requires_grad_(False)
        rel = explain_batch(model, batch.tokens, batch.targets,
                            attention_mask=batch.attention_mask)
        out[b] = {"logits": forward_last(model, batch.tokens, batch.attention_mask),
                  "tokens": rel.tokens, "heads": rel.heads, "attention": rel.attention,
                  "aie": indirect_effects(model, batch, mean_z, progress=False)}
        assert_no_hooks(model)
    for field in out["hooked"]:
        err = _relative(out["bridge"][field], out["hooked"][field])
        assert err <= BACKENDS_RTOL, (field, err)
