"""What differs between TransformerLens's two model classes, mapped in one place.

fvlens runs on a ``HookedTransformer`` (TransformerLens 3.x) or a ``TransformerBridge`` (a
Hugging Face model carrying TransformerLens's hook points; TL 3.9 and 4.x, and the only class
TL 4 has). Both take the same hook lists under the same hook names. What does not match is
handled here (docs/models.md, "Backends"):

- ``hook.name`` on the bridge is a hook point's canonical name (``blocks.0.hook_in`` for
  ``blocks.0.hook_resid_pre``, ``hook_unembed`` for ``unembed.hook_out``): fvlens files what it
  records under the name it asked for, never under ``hook.name``. Aliases list some hook points
  several times in ``hook_dict``; ``hook_points`` has each once.
- The bridge hands ``hook_z``/``hook_q``/``hook_k``/``hook_v`` hooks a reshaped view of the
  tensor it passes on; a hook that takes a gradient with respect to what it read returns it
  (``pass_on``).
- ``hook_pos_embed`` is registered on rotary bridges but never fires (``input_hook_names``).
- ``stop_at_layer=n_layers`` returns logits on the bridge, and its ``start_at_layer`` (TL 4
  only) runs and hooks the blocks below it. ``bridge_run_to`` stops with TL's own
  ``StopAtLayerException``; ``bridge_resume`` runs only the blocks asked for.
- The key/value cache is Hugging Face's (``past_key_values``; the bridge ignores TL's
  ``past_kv_cache=``): ``kv_forward`` runs either. ``install_kv_shim`` repairs the bridge's
  cache with transformers ≥ 5.24, which renamed the attention keyword to ``cache``.
- Config fields only ``HookedTransformer`` has (``cfg_get``), ``original_architecture`` versus
  ``architecture`` (``architecture``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.metadata
import sys
import warnings
from collections.abc import Collection, Iterator
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from fvlens.modeltype import Model

__all__ = ["Model", "KVCache", "tl_version", "has_hooked_transformer", "is_bridge", "hook_points",
           "hook_names", "hook_point", "cfg_get", "architecture", "input_hook_names",
           "bridge_run_to", "bridge_resume", "kv_forward", "repeat_kv",
           "install_kv_shim", "positions", "pass_on"]


def tl_version() -> str:
    """The installed transformer-lens version (it has no ``__version__``)."""
    return importlib.metadata.version("transformer-lens")


def has_hooked_transformer() -> bool:
    """Whether this TransformerLens still has ``HookedTransformer`` (3.x; 4.0 removed it)."""
    return int(tl_version().split(".")[0]) < 4


def is_bridge(model: Model) -> bool:
    """Whether ``model`` is a ``TransformerBridge`` (checked without importing the bridge)."""
    mod = sys.modules.get("transformer_lens.model_bridge")
    cls = getattr(mod, "TransformerBridge", None)
    return cls is not None and isinstance(model, cls)


# --- hook points --------------------------------------------------------------------------


def _points(model: Model) -> dict[str, Any]:
    """``hook_dict`` of ``model``; the bridge's is rebuilt on every access (and lists aliases),
    so it is read once per model and kept on it."""
    if not is_bridge(model):
        return model.hook_dict
    cached = model.__dict__.get("_fvlens_hook_dict")
    if cached is None:
        cached = dict(model.hook_dict)
        model.__dict__["_fvlens_hook_dict"] = cached
    return cached


def hook_names(model: Model) -> Collection[str]:
    """Every hook name ``model.hooks`` accepts (aliases included on the bridge)."""
    return _points(model).keys()


def hook_point(model: Model, name: str):
    """The ``HookPoint`` a hook name resolves to (KeyError for an unknown name)."""
    return _points(model)[name]


def hook_points(model: Model) -> list:
    """Every ``HookPoint`` of ``model`` once (the bridge's aliases resolve to the same one)."""
    seen: dict[int, Any] = {}
    for hp in _points(model).values():
        seen.setdefault(id(hp), hp)
    return list(seen.values())


# --- configuration ------------------------------------------------------------------------


def cfg_get(model: Model, field: str, default: Any = None) -> Any:
    """``model.cfg.<field>``, or ``default`` where the config lacks it (the bridge's config
    has no ``use_attention_sinks``, ``use_logn_attn``, …)."""
    return getattr(model.cfg, field, default)


def architecture(model: Model) -> str | None:
    """The Hugging Face class name (``LlamaForCausalLM``): ``cfg.original_architecture`` on
    HookedTransformer, ``cfg.architecture`` on the bridge."""
    return cfg_get(model, "original_architecture") or cfg_get(model, "architecture")


def input_hook_names(model: Model) -> list[str]:
    """The hooks whose outputs sum to the first residual stream: ``hook_embed``, plus
    ``hook_pos_embed`` for learned positions (a rotary bridge registers it, but it never
    fires)."""
    names = hook_names(model)
    out = ["hook_embed"] if "hook_embed" in names else []
    if "hook_pos_embed" in names and (
            not is_bridge(model) or model.cfg.positional_embedding_type == "standard"):
        out.append("hook_pos_embed")
    return out


def pass_on(x: Tensor, hook: Any) -> Tensor | None:
    """What a reading hook returns so that the tensor it read is the one passed downstream.

    A bridge's ``hook_z`` (and ``q``/``k``/``v``) hook receives a ``[batch, pos, heads,
    d_head]`` view of the flat tensor the model goes on with: a gradient with respect to that
    view is zero unless the hook returns it (the bridge then reshapes it back, values
    unchanged). Elsewhere the tensor read is the one passed on, and nothing is returned (a
    bridge takes an edited norm scale for an edit).
    """
    return x if getattr(hook, "hook_conversion", None) is not None else None


def positions(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Position ids of a left-padded batch (0 at each row's first real token; padding 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# --- run to / resume from a layer on the bridge --------------------------------------------


def _stop(module: torch.nn.Module, args: Any, output: Tensor) -> None:
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    raise StopAtLayerException(output)


@contextlib.contextmanager
def _stop_after(hp) -> Iterator[None]:
    """Stop the forward pass at ``hp``'s output, after every hook already on it. A plain torch
    hook: it fires after TransformerLens's hooks registered before it, and the bridge's
    ``forward`` returns the tensor it carries."""
    handle = hp.register_forward_hook(_stop)
    try:
        yield
    finally:
        handle.remove()


def bridge_run_to(model: Model, tokens: Int[Tensor, "batch pos"],
                  attention_mask: Int[Tensor, "batch pos"] | None, layer: int
                  ) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream after blocks ``0 .. layer-1``, as HookedTransformer's
    ``stop_at_layer`` (block ``layer`` and everything above it never run)."""
    hp = model.blocks[layer - 1].hook_out if layer > 0 else model.blocks[0].hook_in
    with _stop_after(hp):
        out = model(tokens, attention_mask=attention_mask)
    if out.shape[-1] != model.cfg.d_model:
        raise RuntimeError(f"the bridge ran past layer {layer} (output {tuple(out.shape)})")
    return out


def _decoder_layers(model: Model) -> tuple[torch.nn.Module, str]:
    """The Hugging Face module holding the block list, and the list's attribute name."""
    inner = model.original_model.base_model
    for attr in ("layers", "h", "blocks"):
        layers = getattr(inner, attr, None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) == len(model.blocks) and \
                all(a is b for a, b in zip(layers, model.blocks)):
            return inner, attr
    raise NotImplementedError(
        f"cannot find the block list of {type(inner).__name__} (looked for layers, h, blocks); "
        "resuming from a layer on this TransformerBridge is not supported: use "
        "backend='hooked' (transformer-lens 3.9)")


@contextlib.contextmanager
def _only_blocks(model: Model, start: int, stop: int) -> Iterator[None]:
    """Let Hugging Face's decoder loop run blocks ``start .. stop-1`` only; per-layer config
    lists (``layer_types``, indexed by loop position) are sliced alike. Restored on exit."""
    inner, attr = _decoder_layers(model)
    layers = getattr(inner, attr)
    config = inner.config
    types = getattr(config, "layer_types", None)
    setattr(inner, attr, torch.nn.ModuleList(list(layers)[start:stop]))
    if types is not None:
        config.layer_types = list(types)[start:stop]
    try:
        yield
    finally:
        setattr(inner, attr, layers)
        if types is not None:
            config.layer_types = types


@contextlib.contextmanager
def _swap_input(block: torch.nn.Module, resid: Tensor) -> Iterator[None]:
    """Feed ``resid`` to ``block`` in place of what arrives (before any of its hooks fire)."""

    def pre(module, args, kwargs):
        if args:
            return (resid, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": resid}

    handle = block.register_forward_pre_hook(pre, with_kwargs=True, prepend=True)
    try:
        yield
    finally:
        handle.remove()


def bridge_resume(model: Model, resid: Float[Tensor, "batch pos d_model"], *, start: int,
                  stop: int, attention_mask: Int[Tensor, "batch all_pos"] | None = None,
                  past_key_values: Any = None) -> Float[Tensor, "batch pos d_model"]:
    """Blocks ``start .. stop-1`` on a residual stream, as HookedTransformer's
    ``start_at_layer``/``stop_at_layer``: no block outside that range runs or fires a hook.

    The residual enters Hugging Face's forward as ``inputs_embeds`` (so masks and position
    ids are built for its length) and replaces the input of block ``start``; the output is
    read at ``ln_final``'s input, where the pass stops.

    Args:
        attention_mask: covers the cached prefix and ``resid``'s positions when
            ``past_key_values`` is given.
        past_key_values: a Hugging Face cache of the earlier positions (extended in place).
    """
    n_new = resid.shape[1]
    if attention_mask is None:
        past = 0 if past_key_values is None else past_key_values.get_seq_length()
        attention_mask = torch.ones(resid.shape[0], past + n_new, dtype=torch.long,
                                    device=resid.device)
    kwargs: dict[str, Any] = {"attention_mask": attention_mask,
                              "position_ids": positions(attention_mask)[:, -n_new:],
                              "use_cache": past_key_values is not None}
    if past_key_values is not None:
        kwargs["past_key_values"] = past_key_values
    with _only_blocks(model, start, stop), _swap_input(model.blocks[start], resid), \
            _stop_after(model.ln_final.hook_in), _hf_cache_keyword():
        return model(resid, **kwargs)


@contextlib.contextmanager
def _hf_cache_keyword() -> Iterator[None]:
    """Silence transformers >= 5.24's FutureWarning that ``past_key_values`` is now ``cache``:
    the bridge's forward takes only the old name (and hands it on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*past_key_values.* is deprecated",
                                category=FutureWarning)
        yield


# --- key/value caches ---------------------------------------------------------------------


@dataclasses.dataclass
class KVCache:
    """A batch's key/value cache: TransformerLens's own on HookedTransformer, Hugging Face's
    on the bridge; ``mask`` is the attention mask of every cached position."""

    cache: Any
    mask: Tensor


def kv_forward(model: Model, tokens: Int[Tensor, "batch new"],
               attention_mask: Int[Tensor, "batch new"], kv: KVCache | None = None
               ) -> tuple[Float[Tensor, "batch new d_vocab"], KVCache]:
    """Logits of ``tokens`` after the positions in ``kv`` (none: a fresh cache), and the cache
    extended by them (in place).

    Args:
        tokens: the new positions (left-padded prompts for a fresh cache).
        attention_mask: the mask of the new positions only.
    """
    full = attention_mask if kv is None else torch.cat([kv.mask, attention_mask], dim=1)
    if is_bridge(model):
        with _hf_cache_keyword():
            logits, cache = model(tokens, attention_mask=full, use_cache=True,
                                  past_key_values=None if kv is None else kv.cache,
                                  return_type="logits_and_cache")
        return logits, KVCache(cache=cache, mask=full)
    if kv is None:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        kv = KVCache(cache=TransformerLensKeyValueCache.init_cache(
            model.cfg, model.cfg.device, tokens.shape[0]), mask=full)
    logits = model(tokens, attention_mask=attention_mask, past_kv_cache=kv.cache)
    return logits, KVCache(cache=kv.cache, mask=full)


def repeat_kv(kv: KVCache, times: int) -> KVCache:
    """A copy of a bridge cache whose row ``r`` is row ``r // times`` of ``kv``."""
    cache = copy.deepcopy(kv.cache)
    cache.batch_repeat_interleave(times)
    return KVCache(cache=cache, mask=kv.mask.repeat_interleave(times, dim=0))


def install_kv_shim(model: Model) -> bool:
    """Let the bridge's attention find Hugging Face's cache under its new keyword.

    transformers 5.24 renamed the attention argument ``past_key_values`` to ``cache``; the
    bridge (TL 3.9 and 4.3) reads only the old name, so its cache stays empty and cached
    decoding ignores the prompt. This wraps ``_update_kv_cache`` of each attention module of
    ``model`` (this model only, not the class) to pass ``cache`` on as ``past_key_values``.

    Returns:
        Whether any attention module was wrapped (False when there is nothing to repair).
    """
    import inspect

    wrapped = False
    for module in model.modules():
        if not hasattr(type(module), "_update_kv_cache") or "_fvlens_kv_shim" in vars(module):
            continue
        original = getattr(module, "original_component", None)
        if original is None or "cache" not in inspect.signature(original.forward).parameters:
            continue
        update = module._update_kv_cache

        def shim(k, v, _update=update, **kwargs):
            if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
                kwargs["past_key_values"] = kwargs["cache"]
            return _update(k, v, **kwargs)

        module._update_kv_cache = shim
        module.__dict__["_fvlens_kv_shim"] = True
        wrapped = True
    return wrapped
