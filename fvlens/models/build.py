"""Build a ``HookedTransformer`` from a config and a complete state dict, without random init.

``HookedTransformer.__init__`` allocates every weight and computes every layer's rotary
tables (n_ctx × d_head, twice, per layer: 1.2 GB for Gemma 3 at its 32k context) only for
``load_state_dict`` to overwrite them. Here the module tree is built on the ``meta`` device
(no memory, no compute) and the loaded tensors are *assigned* to it, cast to the dtype each
slot has under ``cfg.dtype``. Layers of the same attention type share one rotary table (equal
values; buffers, never parameters).

``complete_state`` supplies what TL's weight conversions leave to ``__init__``: the attention
buffers (from one real block per attention type) and absent biases (zeros) or norm gains (ones).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.components import TransformerBlock

__all__ = ["TRANSPOSED", "complete_state", "drop_folded_norms", "buffer_names",
           "share_equal_buffers", "build", "transposed_layout"]

# Parameters stored transposed in memory (see ``transposed_layout``).
TRANSPOSED = ("W_gate", "W_in", "W_out", "W_U")


def _meta_model(cfg: HookedTransformerConfig) -> HookedTransformer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            return HookedTransformer(cfg, None, move_to_device=False)


def _attn_type(cfg: HookedTransformerConfig, layer: int) -> str:
    return cfg.attn_types[layer] if cfg.use_local_attn and cfg.attn_types else "global"


def buffer_names(cfg: HookedTransformerConfig) -> set[str]:
    """The state-dict keys of a model's buffers (as opposed to parameters)."""
    return {name for name, _ in _meta_model(cfg).named_buffers()}


def complete_state(cfg: HookedTransformerConfig,
                   state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the keys a converted state dict lacks: block buffers, zero biases, unit gains.

    Raises:
        ValueError: a missing key that is neither (a real conversion gap; TL zero-filling it
            would silently disable a sublayer).
    """
    expected = _meta_model(cfg).state_dict()
    missing = [k for k in expected if k not in state]
    if not missing:
        return state
    cpu_cfg = dataclasses.replace(cfg, device="cpu", dtype=torch.float32, n_devices=1)
    block_buffers = {k.split(".", 2)[2] for k, _ in _meta_model(cfg).named_buffers()
                     if k.startswith("blocks.")}
    reps: dict[str, dict[str, torch.Tensor]] = {}
    gaps = []
    for key in missing:
        parts = key.split(".")
        if parts[0] == "blocks" and key.split(".", 2)[2] in block_buffers:
            layer = int(parts[1])
            kind = _attn_type(cfg, layer)
            if kind not in reps:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    block = TransformerBlock(cpu_cfg, layer)
                reps[kind] = dict(block.named_buffers())
            state[key] = reps[kind][key.split(".", 2)[2]]
        elif parts[-1].startswith("b_"):
            state[key] = torch.zeros(expected[key].shape, dtype=torch.float32)
        elif parts[-1] == "w" and ("ln" in parts[-2] or "norm" in parts[-2]):
            state[key] = torch.ones(expected[key].shape, dtype=torch.float32)
        else:
            gaps.append(key)
    if gaps:
        raise ValueError(f"the converted weights lack {len(gaps)} tensor(s) the model needs: "
                         f"{gaps[:8]}")
    return state


def drop_folded_norms(cfg: HookedTransformerConfig,
                      state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the norm gains that folding set to 1 and the folded model has no slot for.

    Raises:
        ValueError: another key the model has no slot for (a gain that was not folded).
    """
    slots = _meta_model(cfg).state_dict()
    extra = [k for k in state if k not in slots]
    bad = [k for k in extra if not (k.endswith(".w") and torch.all(state[k] == 1))]
    if bad:
        raise ValueError(f"the processed weights have tensors the model has no slot for: "
                         f"{bad[:8]}")
    return {k: v for k, v in state.items() if k in slots}


def share_equal_buffers(state: dict[str, torch.Tensor],
                        buffers: set[str]) -> dict[str, str]:
    """Make equal buffers one tensor (rotary tables repeat per layer); parameters never.

    Returns:
        ``{key: first key with the same values}`` for every buffer that now shares.
    """
    uniques: list[tuple[str, torch.Tensor]] = []
    shared: dict[str, str] = {}
    for key in [k for k in state if k in buffers]:
        t = state[key]
        same = next((k for k, u in uniques if u is t or (
            u.shape == t.shape and u.dtype == t.dtype and u.device == t.device
            and torch.equal(u, t))), None)
        if same is None:
            uniques.append((key, t))
        else:
            state[key] = state[same]
            shared[key] = same
    return shared


def build(cfg: HookedTransformerConfig, state: dict[str, torch.Tensor], *,
          dtype: torch.dtype, device: str | torch.device) -> HookedTransformer:
    """A ``HookedTransformer`` holding ``state`` (cast to ``dtype``, moved to ``device``).

    Args:
        cfg: the model's config (any dtype/device; replaced by ``dtype``/``device``).
        state: every key of the model's state dict; float tensors are cast to the dtype their
            slot has under ``dtype`` (TL keeps some buffers, e.g. ``IGNORE``, in float32).
        dtype: the parameter dtype.
        device: where the tensors go (first device when the model spans several).

    Returns:
        The model (no tokenizer set), in eval mode.
    """
    cfg = dataclasses.replace(cfg, dtype=dtype, device=str(torch.device(device)))
    model = _meta_model(cfg)
    slots = model.state_dict()
    extra = sorted(set(state) - set(slots))
    missing = sorted(set(slots) - set(state))
    if extra or missing:
        raise ValueError(f"state dict does not fit the config: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    moved: dict[int, torch.Tensor] = {}  # shared tensors stay shared
    ready = {}
    for key, slot in slots.items():
        t = state[key]
        target = slot.dtype if t.is_floating_point() else t.dtype
        ident = id(t)
        if ident not in moved:
            moved[ident] = t.to(device=device, dtype=target)
        ready[key] = moved[ident]
    model.load_state_dict(ready, strict=True, assign=True)
    # TL's attention swaps in its own buffer when a saved rotary table's length differs from
    # the 2,048 rows it builds (fvlens.models.rotary stores all n_ctx rows): set those directly.
    for key, t in ready.items():
        if t.shape != slots[key].shape:
            owner, _, name = key.rpartition(".")
            setattr(model.get_submodule(owner), name, t)
    meta = [k for k, t in model.state_dict().items() if t.is_meta]
    if meta:
        raise ValueError(f"tensors left unloaded: {meta[:5]}")
    model.eval()
    return model


def transposed_layout(model: HookedTransformer) -> HookedTransformer:
    """Store the MLP and unembedding matrices transposed in memory (values unchanged).

    TransformerLens's gated MLP and unembedding call ``F.linear(x, W.T.contiguous())``, which
    copies the whole matrix on every forward pass (113 MB for SmolLM2's unembedding). With the
    parameter stored as the transpose of a contiguous tensor, ``W.T`` is already contiguous and
    the copy disappears; results are bit-identical. Returns the model, changed in place.
    """
    with torch.no_grad():
        for module in model.modules():
            for name in TRANSPOSED:
                p = module._parameters.get(name)
                if p is not None and p.dim() == 2 and p.is_contiguous():
                    p.data = p.data.T.contiguous().T
    return model
