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

import dataclasses

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.utilities.activation_functions import apply_softcap

from fvlens.backend import cfg_get, is_bridge
from fvlens.forward import final_logits, forward_last
from fvlens.heads.aie_bridge import indirect_effects_bridge
from fvlens.heads.patching import patch_head_hooks, row_patch_hooks, target_probs
from fvlens.hooks import hook_name
from fvlens.batch import PromptBatch
from fvlens.modeltype import Model

__all__ = ["patch_head_hooks", "indirect_effects_reference", "indirect_effects_fast",
           "indirect_effects"]


@torch.no_grad()
def indirect_effects_reference(
    model: Model, corrupted: PromptBatch, mean_z: Float[Tensor, "n_layers n_heads d_head"],
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
    base = torch.cat([target_probs(forward_last(model, c.tokens, c.attention_mask), c.targets)
                      for c in corrupted.chunks(batch_size)])
    out = torch.zeros(len(corrupted), n_layers, n_heads)
    bar = tqdm(total=n_layers * n_heads, desc="AIE (reference)", disable=not progress)
    for layer in range(n_layers):
        for head in range(n_heads):
            probs = []
            with model.hooks(fwd_hooks=patch_head_hooks(layer, head, mean_z[layer, head])):
                for c in corrupted.chunks(batch_size):
                    probs.append(target_probs(
                        forward_last(model, c.tokens, c.attention_mask), c.targets))
            out[:, layer, head] = torch.cat(probs) - base
            bar.update()
    bar.close()
    return out


@torch.no_grad()
def indirect_effects_fast(
    model: Model, corrupted: PromptBatch, mean_z: Float[Tensor, "n_layers n_heads d_head"],
    *, batch_size: int = 16, progress: bool = True,
) -> Float[Tensor, "batch n_layers n_heads"]:
    """The same CIEs as ``indirect_effects_reference``, computing only the last token.

    One forward pass per corrupted prompt records every layer's keys and values; then each
    (prompt, head) gets one row that carries only the last token from the head's layer to the
    logits, attending to the recorded keys and values. Rows of all patched layers go through
    each block together (one call per layer), so the weights are read once per layer. The
    patched head's own layer needs no attention at all: its attention output is recomputed
    from the recorded ``z`` with the head's entry replaced. The blocks are reproduced with
    q/k norms, post-attention/post-MLP norms, local attention windows, soft-capped scores,
    parallel attention+MLP and GQA. Architectures whose blocks this path does not reproduce
    (see ``_shared_prefix_supported``) use TransformerLens's own blocks and key/value cache
    instead (each prompt's keys and values shared by its head rows), slower but equally exact.
    On a ``TransformerBridge`` the rows run Hugging Face's own blocks from the head's layer up,
    attending to its key/value cache (``fvlens.heads.aie_bridge``).

    Args:
        model: the model.
        corrupted: the corrupted prompts (left-padded), with their clean targets.
        mean_z: the value each head is patched to.
        batch_size: prompts per chunk; each layer runs ``batch_size * n_heads`` rows.

    Returns:
        ``[batch, n_layers, n_heads]`` indirect effects on the target's probability.
    """
    if is_bridge(model):  # the same last-token computation through Hugging Face's cache
        return indirect_effects_bridge(model, corrupted, mean_z, batch_size=batch_size,
                                       progress=progress)
    if _shared_prefix_supported(model) is None:
        return _indirect_effects_shared_prefix(model, corrupted, mean_z, batch_size=batch_size,
                                               progress=progress)
    return _indirect_effects_kv_cache(model, corrupted, mean_z, batch_size=batch_size,
                                      progress=progress)


def _indirect_effects_kv_cache(model, corrupted, mean_z, *, batch_size, progress):
    """The fast path through TransformerLens's own blocks and key/value cache (any
    architecture). Each prompt's prefix keys and values are stored once and shared by its
    ``n_heads`` rows (``_SharedPrefixEntry``), never copied per head or per layer."""
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
        base = target_probs(logits[:, -1], chunk.targets)
        rows_mask = mask.repeat_interleave(n_heads, dim=0)  # row r: prompt r // H, head r % H
        rows_cache = _rows_sharing_prefix(cache, n_heads)
        heads = torch.arange(n_heads, device=device).repeat(p)
        # 3. Per layer: every head patched, one row each, from that layer up.
        for layer in range(n_layers):
            resid = resid_pre[layer].repeat_interleave(n_heads, dim=0)
            patch = row_patch_hooks(layer, heads, mean_z[layer][heads.cpu()])
            with model.hooks(fwd_hooks=patch):
                x = model(resid, start_at_layer=layer, stop_at_layer=n_layers,
                          attention_mask=rows_mask, past_kv_cache=rows_cache)
            probs = target_probs(final_logits(model, x[:, -1]),
                                  chunk.targets.repeat_interleave(n_heads))
            out[row:row + p, layer] = probs.view(p, n_heads) - base[:, None]
            bar.update()
        row += p
    bar.close()
    return out


@dataclasses.dataclass
class _SharedPrefixEntry(TransformerLensKeyValueCacheEntry):
    """A frozen cache entry holding each prompt's prefix keys/values once for ``n_rows``
    consecutive rows: ``past_keys`` is ``[prompts, prefix, kv_heads, d_head]`` and ``append``
    builds the ``[prompts * n_rows, prefix + 1, ...]`` keys of one block call in one tensor
    (the only per-row memory, freed after the call)."""

    n_rows: int = 1

    def append(self, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
        return (_with_shared_prefix(self.past_keys, new_keys, self.n_rows),
                _with_shared_prefix(self.past_values, new_values, self.n_rows))


def _with_shared_prefix(prefix: Tensor, new: Tensor, n_rows: int) -> Tensor:
    """``[p, t, ...]`` prefix and ``[p * n_rows, 1, ...]`` new rows -> ``[p * n_rows, t + 1,
    ...]``, row ``r`` reading prompt ``r // n_rows``'s prefix."""
    p, t = prefix.shape[:2]
    out = new.new_empty((p * n_rows, t + new.shape[1], *new.shape[2:]))
    out.view(p, n_rows, *out.shape[1:])[:, :, :t] = prefix[:, None]
    out[:, t:] = new
    return out


def _rows_sharing_prefix(cache: TransformerLensKeyValueCache, n_rows: int
                         ) -> TransformerLensKeyValueCache:
    """A frozen cache whose rows ``r`` read prompt ``r // n_rows``'s keys and values of
    ``cache`` (no copy)."""
    entries = [_SharedPrefixEntry(past_keys=e.past_keys, past_values=e.past_values,
                                  frozen=True, n_rows=n_rows) for e in cache.entries]
    previous = cache.previous_attention_mask
    previous = previous[:, None].expand(-1, n_rows, -1).reshape(-1, previous.shape[-1])
    return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=previous,
                                        frozen=True)


def _shared_prefix_supported(model: Model) -> str | None:
    """None when ``_indirect_effects_shared_prefix`` reproduces this model's blocks exactly,
    else the reason it does not."""
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    if is_bridge(model):
        return "TransformerBridge (its blocks have no apply_mlp / calculate_qkv_matrices)"
    cfg = model.cfg
    rotary = cfg.positional_embedding_type == "rotary"
    checks = {
        "positional embedding": rotary or cfg.positional_embedding_type == "standard",
        "post-norm block (OLMo 2/3)": cfg.original_architecture not in POST_NORM_ARCHITECTURES,
        "OLMo qk-norm": not str(cfg.original_architecture).startswith("Olmo"),
        "q/k norm without rotary embeddings": rotary or not cfg.use_qk_norm,
        "attention-only": not cfg.attn_only,
        "split qkv input": not (cfg.use_split_qkv_input or cfg.use_attn_in),
        "attention sinks": not cfg_get(model, "use_attention_sinks"),
        "log-n attention": not cfg_get(model, "use_logn_attn"),
        "qkv clipping": cfg_get(model, "clip_qkv") is None,
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
    heads = torch.arange(n_heads, device=device)
    row = 0
    for chunk in chunks:
        tokens, mask = chunk.tokens.to(device), chunk.attention_mask.to(device)
        p = len(chunk)
        # 1. One unpatched pass: every layer's keys and values, and at the last token each
        #    layer's resid_pre and z (and, for parallel blocks, the MLP output).
        rec: dict[str, Tensor] = {}

        def keep(x: Tensor, hook, last: bool) -> None:
            # the last position copied, so the full activation is freed; keys/values viewed
            rec[hook.name] = x[:, -1].clone() if last else x[:, :-1]

        hooks = []
        for layer in range(n_layers):
            hooks += [(hook_name("rot_k" if rotary else "k", layer),
                       lambda x, hook: keep(x, hook, False)),
                      (hook_name("v", layer), lambda x, hook: keep(x, hook, False)),
                      (hook_name("resid_pre", layer), lambda x, hook: keep(x, hook, True)),
                      (hook_name("z", layer), lambda x, hook: keep(x, hook, True))]
            if cfg.parallel_attn_mlp:
                hooks.append((hook_name("mlp_out", layer), lambda x, hook: keep(x, hook, True)))
        with model.hooks(fwd_hooks=hooks):
            base = target_probs(forward_last(model, tokens, mask), chunk.targets)
        # 2. Layer by layer, one row per (prompt, patched head). A head of layer L enters as
        #    L's attention output recomputed with that head's z replaced; its row then carries
        #    only the last token through the layers above L, together with the rows of every
        #    lower layer's heads (one block call per layer, rows growing by n_heads per layer:
        #    the weights are read once per layer, not once per (patched layer, layer) pair).
        x: Tensor | None = None  # [p, rows so far, d_model]
        for layer in range(n_layers):
            if x is not None:
                rows = x.shape[1]
                x = _last_token_block(model, layer, x.reshape(p * rows, 1, -1), rec,
                                      mask.repeat_interleave(rows, dim=0), n_rows=rows)
                x = x.view(p, rows, -1)
            z = rec[hook_name("z", layer)][:, None].repeat(1, n_heads, 1, 1)  # [p, H, H, d]
            z[:, heads, heads] = mean_z[layer].to(z)  # row h: head h patched
            attn_out = _attention_output(model, layer, z.flatten(2))  # [p, H, d_model]
            mlp_out = rec.get(hook_name("mlp_out", layer))
            new = _residual_after(model, layer, rec[hook_name("resid_pre", layer)][:, None],
                                  attn_out, None if mlp_out is None else mlp_out[:, None])
            x = new if x is None else torch.cat([x, new], dim=1)
            bar.update()
        assert x is not None
        targets = chunk.targets.repeat_interleave(n_layers * n_heads)
        flat = x.reshape(p * n_layers * n_heads, 1, -1)
        probs = torch.cat([target_probs(final_logits(model, flat[i:i + UNEMBED_ROWS, -1]),
                                         targets[i:i + UNEMBED_ROWS])
                           for i in range(0, len(flat), UNEMBED_ROWS)])
        out[row:row + p] = probs.view(p, n_layers, n_heads) - base[:, None, None]
        row += p
    bar.close()
    return out


# Rows unembedded at once by the fast path (rows × d_vocab float32 logits at a time).
UNEMBED_ROWS = 256


def _attention_output(model: Model, layer: int, z: Tensor) -> Tensor:
    """``z`` ``[..., n_heads * d_head]`` through W_O, b_O (as TransformerLens computes it)
    and, where the block has one, the post-attention norm: what ``hook_attn_out`` sees."""
    attn = model.blocks[layer].attn
    w = attn.W_O.flatten(0, 1).T.contiguous()  # [d_model, n_heads * d_head]
    out = F.linear(z.to(w.dtype), w, attn.b_O)
    if model.cfg.use_normalization_before_and_after:
        out = model.blocks[layer].ln1_post(out)
    return out


def _residual_after(model: Model, layer: int, resid_pre: Tensor, attn_out: Tensor,
                    mlp_out: Tensor | None = None) -> Tensor:
    """The block's ``hook_resid_post`` from its input and attention output, in
    TransformerLens's order of additions; a parallel block may pass its (unchanged)
    ``mlp_out``."""
    block = model.blocks[layer]
    if model.cfg.parallel_attn_mlp:
        if mlp_out is None:
            mlp_out = block.apply_mlp(block.ln2(resid_pre))
        return resid_pre + attn_out + mlp_out
    mid = resid_pre + attn_out
    return mid + block.apply_mlp(block.ln2(mid))


def _last_token_block(model: Model, layer: int, x: Tensor, rec: dict[str, Tensor],
                      rows_mask: Tensor, *, n_rows: int) -> Tensor:
    """Block ``layer`` for the last token only, ``n_rows`` rows per prompt, attending to the
    prompt's recorded keys and values (shared by its rows, never copied per row)."""
    cfg = model.cfg
    attn = model.blocks[layer].attn
    rows, t = rows_mask.shape
    p = rows // n_rows
    normed = model.blocks[layer].ln1(x)
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
    hidden = rows_mask.view(p, n_rows, t)[:, 0] == 0  # [p, t]: padding
    if attn.attn_type == "local":  # the last query (position t-1) sees t-window .. t-1
        hidden = hidden | (torch.arange(t, device=hidden.device) < t - cfg.window_size)
    scores = scores.masked_fill(hidden[:, None, None, None, :], float("-inf"))
    pattern = scores.softmax(-1)
    z = torch.einsum("prkgt,ptkd->prkgd", pattern[..., :-1], values) + pattern[..., -1:] * vg
    attn_out = _attention_output(model, layer, z.reshape(rows, 1, cfg.n_heads * d))
    return _residual_after(model, layer, x, attn_out)


def indirect_effects(
    model: Model, corrupted: PromptBatch, mean_z: Float[Tensor, "n_layers n_heads d_head"],
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
