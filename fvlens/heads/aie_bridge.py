"""The fast causal-mediation path on a ``TransformerBridge`` (``indirect_effects_fast``).

The same shortcut as HookedTransformer's fast path (``fvlens.heads.aie``): patching a head at
the last position changes nothing before it, so each corrupted prompt's prefix runs once into
a key/value cache, here Hugging Face's own. The unpatched last token then gives every layer's
``hook_resid_pre``; for a layer L, one row per (prompt, head) carries only the last token from
block L up (``fvlens.backend.bridge_resume``: the blocks below L do not run), head h patched
in ``hook_z``, attending to a copy of its prompt's cached keys and values.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from fvlens.backend import bridge_resume, kv_forward, repeat_kv
from fvlens.batch import PromptBatch
from fvlens.forward import final_logits
from fvlens.heads.patching import row_patch_hooks, target_probs
from fvlens.hooks import hook_name
from fvlens.modeltype import Model

__all__ = ["indirect_effects_bridge"]


@torch.no_grad()
def indirect_effects_bridge(
    model: Model, corrupted: PromptBatch, mean_z: Float[Tensor, "n_layers n_heads d_head"], *,
    batch_size: int = 8, progress: bool = True,
) -> Float[Tensor, "batch n_layers n_heads"]:
    """CIE of every head on every corrupted prompt, the last token only (see the module).

    Args:
        model: a ``TransformerBridge``.
        corrupted: the corrupted prompts (left-padded), with their clean targets.
        mean_z: the value each head is patched to.
        batch_size: prompts per chunk; each layer runs ``batch_size * n_heads`` rows.

    Returns:
        ``[batch, n_layers, n_heads]`` indirect effects on the target's probability.
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    device = model.cfg.device
    out = torch.zeros(len(corrupted), n_layers, n_heads)
    chunks = corrupted.chunks(batch_size)
    bar = tqdm(total=len(chunks) * n_layers, desc="AIE (fast, bridge)", disable=not progress)
    row = 0
    for chunk in chunks:
        tokens, mask = chunk.tokens.to(device), chunk.attention_mask.to(device)
        p = len(chunk)
        # 1. The prefix (all but the last token) into Hugging Face's cache, once.
        _, prefix = kv_forward(model, tokens[:, :-1], mask[:, :-1])
        # 2. The last token, unpatched (on a copy of the cache): baseline and resid_pre.
        resid_pre: list[Tensor | None] = [None] * n_layers

        def grab(layer: int):
            def fn(x: Tensor, hook) -> None:
                resid_pre[layer] = x

            return fn

        hooks = [(hook_name("resid_pre", layer), grab(layer)) for layer in range(n_layers)]
        with model.hooks(fwd_hooks=hooks):
            logits, _ = kv_forward(model, tokens[:, -1:], mask[:, -1:], repeat_kv(prefix, 1))
        base = target_probs(logits[:, -1], chunk.targets)
        heads = torch.arange(n_heads, device=device).repeat(p)  # row r: head r % H
        targets = chunk.targets.repeat_interleave(n_heads)
        last_mask = mask[:, -1:].repeat_interleave(n_heads, dim=0)
        # 3. Per layer: every head patched, one row each, from that layer up.
        for layer in range(n_layers):
            rows = repeat_kv(prefix, n_heads)
            resid = resid_pre[layer].repeat_interleave(n_heads, dim=0)  # type: ignore[union-attr]
            with model.hooks(fwd_hooks=row_patch_hooks(layer, heads, mean_z[layer][heads.cpu()])):
                x = bridge_resume(model, resid, start=layer, stop=n_layers,
                                  attention_mask=torch.cat([rows.mask, last_mask], dim=1),
                                  past_key_values=rows.cache)
            probs = target_probs(final_logits(model, x[:, -1]), targets)
            out[row:row + p, layer] = probs.view(p, n_heads) - base[:, None]
            del rows
            bar.update()
        row += p
    bar.close()
    return out
