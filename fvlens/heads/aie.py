"""Causal mediation: the indirect effect of each attention head (Todd et al. 2024, §2.2).

For a corrupted prompt p̃ (ICL with shuffled labels, or a neutral sequence in place of an
instruction) and a head h, the causal indirect effect is

    CIE(h | p̃) = P(target | p̃, z_h[last] := mean_h) − P(target | p̃)        (Todd et al., Eq. 2)

and the average indirect effect AIE(h) is its mean over corrupted prompts (Eq. 3).

Two implementations compute the same numbers:

- ``reference``: what the papers do — one full forward pass per head and prompt, with the
  head's ``hook_z`` replaced at the last position.
- ``fast``: patching only the last position leaves every earlier position unchanged under
  causal attention, so each corrupted prompt's prefix is run once into a key/value cache; a
  head in layer L then needs only the last token's computation from layer L upwards. All heads
  of a layer, for a chunk of prompts, run as one batch of single-token rows.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.HookedTransformer import apply_softcap

from fvlens.forward import final_logits, forward_last
from fvlens.hooks import HookList, hook_name
from fvlens.prompts import PromptBatch

__all__ = ["patch_head_hooks", "indirect_effects_reference", "indirect_effects_fast",
           "indirect_effects"]


def patch_head_hooks(layer: int, head: int, value: Float[Tensor, " d_head"]) -> HookList:
    """A hook list that sets head ``head`` of ``layer`` to ``value`` at the last position."""

    def hook(z: Tensor, hook) -> Tensor:
        z = z.clone()
        z[:, -1, head] = value.to(z)
        return z

    return [(hook_name("z", layer), hook)]


def _target_probs(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.float().softmax(-1).gather(1, targets[:, None].to(logits.device))[:, 0].cpu()


@torch.no_grad()
def indirect_effects_reference(
    model: HookedTransformer, corrupted: PromptBatch, mean_z: Float[Tensor, "n_layers n_heads d_head"],
    *, batch_size: int = 16, progress: bool = True,
) -> Float[Tensor, "batch n_layers n_heads"]:
    """CIE of every head on every corrupted prompt, one patched forward per head (reference).

    Args:
        model: the model.
        corrupted: the corrupted prompts, with their clean targets.
        mean_z: the value each head is patched to (its mean activation on clean prompts).
        batch_size: prompts per forward pass.

    Returns:
        ``[batch, n_layers, n_heads]`` indirect effects on the target's probability.
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    base = torch.cat([_target_probs(forward_last(model, c.tokens, c.attention_mask), c.targets)
                      for c in corrupted.chunks(batch_size)])
    out = torch.zeros(len(corrupted), n_layers, n_heads)
    bar = tqdm(total=n_layers * n_heads, desc="AIE (reference)", disable=not progress)
    for layer in range(n_layers):
        for head in range(n_heads):
            probs = []
            with model.hooks(fwd_hooks=patch_head_hooks(layer, head, mean_z[layer, head])):
                for c in corrupted.chunks(batch_size):
                    probs.append(_target_probs(
                        forward_last(model, c.tokens, c.attention_mask), c.targets))
            out[:, layer, head] = torch.cat(probs) - base
            bar.update()
    bar.close()
    return out


@torch.no_grad()
def indirect_effects_fast(
    model: HookedTransformer, corrupted: PromptBatch, mean_z: Float[Tensor, "n_layers n_heads d_head"],
    *, batch_size: int = 16, progress: bool = True,
) -> Float[Tensor, "batch n_layers n_heads"]:
    """The same CIEs as ``indirect_effects_reference``, computing only the last token.

    One forward pass per corrupted prompt records every layer's keys and values; then each
    (prompt, head) gets one row that carries only the last token from the head's layer to the
    logits, attending to the recorded keys and values. Rows of all patched layers go through
    each block together (one call per layer), so the weights are read once per layer. The
    patched head's own layer needs no attention at all: its output differs from the
    unpatched one by exactly ``(mean_h - z_h) @ W_O[L, h]``. Architectures whose blocks this
    path does not reproduce (see ``_shared_prefix_supported``) use TransformerLens's own
    key/value cache instead, which is slower but equally exact.

    Args:
        model: the model.
        corrupted: the corrupted prompts (left-padded), with their clean targets.
        mean_z: the value each head is patched to.
        batch_size: prompts per chunk; each layer runs ``batch_size * n_heads`` rows.

    Returns:
        ``[batch, n_layers, n_heads]`` indirect effects on the target's probability.
    """
    if _shared_prefix_supported(model) is None:
        return _indirect_effects_shared_prefix(model, corrupted, mean_z, batch_size=batch_size,
                                               progress=progress)
    return _indirect_effects_kv_cache(model, corrupted, mean_z, batch_size=batch_size,
                                      progress=progress)


def _indirect_effects_kv_cache(model, corrupted, mean_z, *, batch_size, progress):
    """The fast path through TransformerLens's key/value cache (any architecture)."""
    cfg = model.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    device = cfg.device
    out = torch.zeros(len(corrupted), n_layers, n_heads)
    chunks = corrupted.chunks(batch_size)
    bar = tqdm(total=len(chunks) * n_layers, desc="AIE (fast, kv cache)", disable=not progress)
    row = 0
    for chunk in chunks:
        tokens, mask = chunk.tokens.to(device), chunk.attention_mask.to(device)
        p = len(chunk)
        # 1. The prefix (all but the last token) into a key/value cache, once.
        cache = TransformerLensKeyValueCache.init_cache(cfg, device, batch_size=p)
        model(tokens[:, :-1], attention_mask=mask[:, :-1], past_kv_cache=cache, return_type=None)
        cache.freeze()
        # 2. The last token, unpatched: the baseline probability and each layer's input.
        resid_pre: list[Tensor] = [None] * n_layers  # type: ignore[list-item]

        def grab(x: Tensor, hook, _store=resid_pre) -> None:
            _store[hook.layer()] = x

        names = [hook_name("resid_pre", layer) for layer in range(n_layers)]
        with model.hooks(fwd_hooks=[(n, grab) for n in names]):
            logits = model(tokens[:, -1:], attention_mask=mask[:, -1:], past_kv_cache=cache)
        base = _target_probs(logits[:, -1], chunk.targets)
        full_mask = cache.previous_attention_mask.new_ones(p, 1)
        full_mask = torch.cat([cache.previous_attention_mask, full_mask], dim=1)
        heads = torch.arange(n_heads, device=device).repeat(p)  # row r patches head r % H
        # 3. Per layer: every head patched, one row each, from that layer up.
        for layer in range(n_layers):
            rows_cache = _repeat_cache(cache, n_heads, from_layer=layer)
            resid = resid_pre[layer].repeat_interleave(n_heads, dim=0)
            value = mean_z[layer].to(device=device, dtype=resid.dtype)[heads]

            def patch(z: Tensor, hook, _value=value) -> Tensor:
                z = z.clone()
                z[torch.arange(z.shape[0], device=z.device), -1, heads] = _value
                return z

            with model.hooks(fwd_hooks=[(hook_name("z", layer), patch)]):
                x = model(resid, start_at_layer=layer, stop_at_layer=n_layers,
                          attention_mask=full_mask.repeat_interleave(n_heads, dim=0),
                          past_kv_cache=rows_cache)
            logits = final_logits(model, x[:, -1])
            probs = _target_probs(logits, chunk.targets.repeat_interleave(n_heads))
            out[row:row + p, layer] = probs.view(p, n_heads) - base[:, None]
            bar.update()
        row += p
    bar.close()
    return out


def _shared_prefix_supported(model: HookedTransformer) -> str | None:
    """None when ``_indirect_effects_shared_prefix`` reproduces this model's blocks exactly,
    else the reason it does not."""
    from transformer_lens.loading_from_pretrained import POST_NORM_ARCHITECTURES

    cfg = model.cfg
    checks = {
        "positional embedding": cfg.positional_embedding_type in ("rotary", "standard"),
        "post-norm block": cfg.original_architecture not in POST_NORM_ARCHITECTURES,
        "OLMo qk-norm": not str(cfg.original_architecture).startswith("Olmo"),
        "parallel attention and MLP": not cfg.parallel_attn_mlp,
        "attention-only": not cfg.attn_only,
        "norm after sub-layers": not cfg.use_normalization_before_and_after,
        "split qkv input": not (cfg.use_split_qkv_input or cfg.use_attn_in),
        "attention sinks": not cfg.use_attention_sinks,
        "log-n attention": not cfg.use_logn_attn,
        "qkv clipping": cfg.clip_qkv is None,
        "local attention": not cfg.attn_types or set(cfg.attn_types) == {"global"},
        "4-bit weights": not cfg.load_in_4bit,
        "attention result hook": not cfg.use_attn_result,
        "causal attention": cfg.attention_dir == "causal",
    }
    failed = [name for name, ok in checks.items() if not ok]
    return ", ".join(failed) if failed else None


def _indirect_effects_shared_prefix(model, corrupted, mean_z, *, batch_size, progress):
    cfg = model.cfg
    n_layers, n_heads, device = cfg.n_layers, cfg.n_heads, cfg.device
    rotary = cfg.positional_embedding_type == "rotary"
    out = torch.zeros(len(corrupted), n_layers, n_heads)
    chunks = corrupted.chunks(batch_size)
    bar = tqdm(total=len(chunks) * n_layers, desc="AIE (fast)", disable=not progress)
    row = 0
    for chunk in chunks:
        tokens, mask = chunk.tokens.to(device), chunk.attention_mask.to(device)
        p = len(chunk)
        # 1. One unpatched pass: every layer's keys and values, and at the last token each
        #    layer's resid_mid and z.
        rec: dict[str, Tensor] = {}

        def keep(x: Tensor, hook, last: bool) -> None:
            rec[hook.name] = x[:, -1] if last else x[:, :-1]

        hooks = []
        for layer in range(n_layers):
            hooks += [(hook_name("rot_k" if rotary else "k", layer),
                       lambda x, hook: keep(x, hook, False)),
                      (hook_name("v", layer), lambda x, hook: keep(x, hook, False)),
                      (hook_name("resid_mid", layer), lambda x, hook: keep(x, hook, True)),
                      (hook_name("z", layer), lambda x, hook: keep(x, hook, True))]
        with model.hooks(fwd_hooks=hooks):
            base = _target_probs(forward_last(model, tokens, mask), chunk.targets)
        # 2. Layer by layer, one row per (prompt, patched head). A head of layer L enters as
        #    a change of L's attention output; its row then carries only the last token
        #    through the layers above L, together with the rows of every lower layer's heads
        #    (one block call per layer, rows growing by n_heads per layer: the weights are
        #    read once per layer, not once per (patched layer, layer) pair).
        x: Tensor | None = None  # [p, rows so far, d_model]
        for layer in range(n_layers):
            block = model.blocks[layer]
            if x is not None:
                rows = x.shape[1]
                x = _last_token_block(model, layer, x.reshape(p * rows, 1, -1), rec,
                                      mask.repeat_interleave(rows, dim=0), n_rows=rows)
                x = x.view(p, rows, -1)
            z = rec[hook_name("z", layer)]  # [p, H, d_head]
            delta = torch.einsum("phd,hdm->phm", mean_z[layer].to(z)[None] - z,
                                 block.attn.W_O)  # [p, H, d_model]
            new = (rec[hook_name("resid_mid", layer)][:, None, :] + delta).contiguous()
            new = new + block.apply_mlp(block.ln2(new))
            x = new if x is None else torch.cat([x, new], dim=1)
            bar.update()
        assert x is not None
        targets = chunk.targets.repeat_interleave(n_layers * n_heads)
        flat = x.reshape(p * n_layers * n_heads, 1, -1)
        probs = torch.cat([_target_probs(final_logits(model, flat[i:i + UNEMBED_ROWS, -1]),
                                         targets[i:i + UNEMBED_ROWS])
                           for i in range(0, len(flat), UNEMBED_ROWS)])
        out[row:row + p] = probs.view(p, n_layers, n_heads) - base[:, None, None]
        row += p
    bar.close()
    return out


# Rows unembedded at once by the fast path (rows × d_vocab float32 logits at a time).
UNEMBED_ROWS = 256


def _last_token_block(model: HookedTransformer, layer: int, x: Tensor, rec: dict[str, Tensor],
                      rows_mask: Tensor, *, n_rows: int) -> Tensor:
    """Block ``layer`` for the last token only, ``n_rows`` rows per prompt, attending to the
    prompt's recorded keys and values (shared by its rows, never copied per row)."""
    cfg = model.cfg
    block = model.blocks[layer]
    attn = block.attn
    rows, t = rows_mask.shape
    p = rows // n_rows
    normed = block.ln1(x)
    q, k, v = attn.calculate_qkv_matrices(normed, normed, normed)  # [rows, 1, heads, d]
    if cfg.positional_embedding_type == "rotary":
        q = attn.apply_rotary(q, t - 1, rows_mask)
        k = attn.apply_rotary(k, t - 1, rows_mask)
    n_kv = k.shape[2]
    group = cfg.n_heads // n_kv
    d = cfg.d_head
    qg = q.reshape(p, n_rows, n_kv, group, d)
    kg = k.reshape(p, n_rows, n_kv, 1, d)
    vg = v.reshape(p, n_rows, n_kv, 1, d)
    keys = rec[hook_name("rot_k" if cfg.positional_embedding_type == "rotary" else "k", layer)]
    values = rec[hook_name("v", layer)]  # [p, t-1, n_kv, d]
    scores_prefix = torch.einsum("prkgd,ptkd->prkgt", qg, keys) / attn.attn_scale
    scores_self = (qg * kg).sum(-1, keepdim=True) / attn.attn_scale
    scores = torch.cat([scores_prefix, scores_self], dim=-1)
    scores = apply_softcap(scores, cfg.attn_scores_soft_cap)
    pad = rows_mask.view(p, n_rows, t)[:, 0] == 0  # [p, t]
    scores = scores.masked_fill(pad[:, None, None, None, :], float("-inf"))
    pattern = scores.softmax(-1)
    z = torch.einsum("prkgt,ptkd->prkgd", pattern[..., :-1], values) + pattern[..., -1:] * vg
    z = z.reshape(rows, 1, cfg.n_heads * d)
    attn_out = z @ attn.W_O.reshape(cfg.n_heads * d, cfg.d_model) + attn.b_O
    x = x + attn_out
    return x + block.apply_mlp(block.ln2(x))


def _repeat_cache(cache: TransformerLensKeyValueCache, times: int, *, from_layer: int
                  ) -> TransformerLensKeyValueCache:
    """A frozen copy of ``cache`` with every batch row repeated ``times`` (layers below
    ``from_layer`` are left empty: those blocks are skipped)."""
    entries = []
    for i, e in enumerate(cache.entries):
        if i < from_layer:
            entries.append(e)
            continue
        entries.append(TransformerLensKeyValueCacheEntry(
            past_keys=e.past_keys.repeat_interleave(times, dim=0),
            past_values=e.past_values.repeat_interleave(times, dim=0), frozen=True))
    return TransformerLensKeyValueCache(
        entries=entries,
        previous_attention_mask=cache.previous_attention_mask.repeat_interleave(times, dim=0),
        frozen=True)


def indirect_effects(
    model: HookedTransformer, corrupted: PromptBatch, mean_z: Float[Tensor, "n_layers n_heads d_head"],
    *, method: str = "fast", batch_size: int | None = None, progress: bool = True,
) -> Float[Tensor, "batch n_layers n_heads"]:
    """CIE of every head on every corrupted prompt; ``method`` is "fast" or "reference"."""
    if method == "fast":
        return indirect_effects_fast(model, corrupted, mean_z, batch_size=batch_size or 8,
                                     progress=progress)
    if method == "reference":
        return indirect_effects_reference(model, corrupted, mean_z, batch_size=batch_size or 16,
                                          progress=progress)
    raise ValueError(f"unknown causal-mediation method {method!r}; choose 'fast' or 'reference'")
