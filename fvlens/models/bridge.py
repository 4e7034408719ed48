"""Loading a model as a TransformerLens ``TransformerBridge`` (``load_model(backend="bridge")``).

The bridge wraps the Hugging Face model fvlens already reads (embedded GGUF, ``.gguf`` file,
local folder, hub name) with TransformerLens's hook points, so no weight conversion is needed:

1. the HF model in float32, with ``config.architectures`` set (a GGUF-loaded config has none,
   and the bridge cannot place Gemma 3 without it) and ``use_cache`` off (a cache is built only
   where fvlens asks for one, ``fvlens.backend.kv_forward``);
2. ``TransformerBridge.boot_transformers(hf_model=..., tokenizer=...)``: nothing is downloaded;
3. compatibility mode with fvlens's own ``Processing`` flags (never TL's defaults, which
   center the unembedding and the writing weights), for HookedTransformer's hook names;
4. ``cfg.default_prepend_bos`` from the tokenizer, the key/value-cache shim where transformers
   needs it (``fvlens.backend.install_kv_shim``), then dtype and device.

A GGUF file is dequantized once: the float32 HF weights, config and tokenizer are cached
(``hf-<name>-<key>/`` in the weight cache), so a warm load reads safetensors instead of
dequantizing (docs/models.md, "Backends", for the times).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from fvlens.backend import install_kv_shim, tl_version
from fvlens.models.convert import load_hf, tokenizer_adds_bos
from fvlens.models.specs import Source
from fvlens.modeltype import Model

__all__ = ["load_bridge", "boot_bridge", "HF_CACHE_FORMAT"]

HF_CACHE_FORMAT = 1
_WEIGHTS, _META = "model.safetensors", "fvlens-meta.json"


def boot_bridge(hf_model: Any, tokenizer: Any, *, name: str, processing: dict[str, bool],
                adds_bos: bool, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> tuple[Model, bool]:
    """A ``TransformerBridge`` around a loaded Hugging Face causal LM (steps 1-4 above).

    Args:
        hf_model: the HF model (float32; changed in place: eager attention, folded norms).
        tokenizer: its tokenizer.
        name: the label TransformerLens records as ``cfg.model_name``.
        processing: ``dataclasses.asdict(Processing(...))``.
        adds_bos: whether prompts start with BOS (``cfg.default_prepend_bos``).

    Returns:
        The bridge in eval mode, and whether the key/value-cache shim was installed.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if not getattr(hf_model.config, "architectures", None):
        hf_model.config.architectures = [type(hf_model).__name__]
    hf_model.config.use_cache = False
    flags = {k: bool(processing.get(k, False)) for k in
             ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model,
                                                     tokenizer=tokenizer, device="cpu",
                                                     dtype=torch.float32)
        if any(flags.values()):
            bridge.enable_compatibility_mode(disable_warnings=True, **flags)
        else:
            bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    bridge.cfg.default_prepend_bos = adds_bos
    bridge.cfg.default_padding_side = "left"
    if bridge.tokenizer is not None:
        bridge.tokenizer.padding_side = "left"
    shim = install_kv_shim(bridge)
    bridge.eval()
    if dtype != torch.float32 or str(device) != "cpu":
        bridge.to(device=device, dtype=dtype)
        bridge.cfg.device = str(device)
        bridge.cfg.dtype = dtype
    return bridge, shim


def load_bridge(spec: str, source: Source, path: Path | None, *, processing: dict[str, bool],
                device: str | torch.device, dtype: torch.dtype,
                cache_root: Path | None) -> Model:
    """``load_model(spec, backend="bridge")``: ``source`` is the resolved spec, ``path`` the
    GGUF file or folder to read (None for hub names). ``cache_root`` None: no cache.
    """
    t0 = time.perf_counter()
    entry = None
    if cache_root is not None and source.kind in ("embedded", "gguf"):
        entry = Path(cache_root) / _entry_name(source)
    got = _read(entry, source) if entry is not None else None
    if got is None:
        hf_model, tokenizer = _load_source(source, path)
        if entry is not None:
            _write(entry, hf_model, tokenizer, source)
    else:
        hf_model, tokenizer = got
    t_hf = time.perf_counter() - t0
    model, shim = boot_bridge(hf_model, tokenizer, name=source.name, processing=processing,
                              adds_bos=tokenizer_adds_bos(tokenizer), device=device, dtype=dtype)
    model.fvlens_meta = {
        "spec": str(spec), "name": source.name, "kind": source.kind,
        "source_hash": source.key, "processing": dict(processing),
        "dtype": str(dtype).removeprefix("torch."), "device": str(device),
        "from_cache": got is not None, "backend": "bridge",
        "transformer_lens": tl_version(), "kv_shim": shim,
        "architecture": type(hf_model).__name__,
        "seconds": {"hf": round(t_hf, 2), "boot": round(time.perf_counter() - t0 - t_hf, 2)},
    }
    return model


def _load_source(source: Source, path: Path | None):
    if source.kind == "hub":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source.name)
        hf_model = AutoModelForCausalLM.from_pretrained(source.name, dtype=torch.float32)
        return hf_model.eval(), tokenizer
    return load_hf(source, path)


# --- the cache of dequantized GGUF weights ------------------------------------------------


def _entry_name(source: Source) -> str:
    from importlib.metadata import version

    ident = json.dumps([HF_CACHE_FORMAT, source.kind, source.name, source.key,
                        version("transformers")], sort_keys=True)
    return f"hf-{source.name.replace('/', '--')}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def _write(entry: Path, hf_model: Any, tokenizer: Any, source: Source) -> None:
    """The float32 HF weights (tied copies once), config and tokenizer, written atomically."""
    from safetensors.torch import save_file

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        seen: set[int] = set()
        state = {}
        for key, t in hf_model.state_dict().items():
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:  # tied (lm_head = embed_tokens): from_pretrained re-ties it
                continue
            seen.add(ptr)
            state[key] = t.detach().to(torch.float32).contiguous()
        save_file(state, str(tmp / _WEIGHTS))
        config = hf_model.config.to_dict()
        config.pop("quantization_config", None)  # the weights are dequantized
        config["architectures"] = config.get("architectures") or [type(hf_model).__name__]
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        st = (tmp / _WEIGHTS).stat()
        meta = {"format": HF_CACHE_FORMAT, "source_hash": source.key, "size": st.st_size}
        (tmp / _META).write_text(json.dumps(meta))
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    except OSError as err:
        warnings.warn(f"could not write the HF weight cache at {entry}: {err}", stacklevel=3)
        shutil.rmtree(tmp, ignore_errors=True)


def _read(entry: Path, source: Source):
    """(HF model, tokenizer) from the cache, or None; a damaged entry is removed."""
    if not (entry / _META).is_file():
        return None
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        meta = json.loads((entry / _META).read_text())
        if meta.get("format") != HF_CACHE_FORMAT or meta.get("source_hash") != source.key:
            raise ValueError("stale entry")
        if (entry / _WEIGHTS).stat().st_size != meta["size"]:
            raise ValueError("weights file has the wrong size")
        tokenizer = AutoTokenizer.from_pretrained(str(entry / "tokenizer"))
        hf_model = AutoModelForCausalLM.from_pretrained(str(entry), dtype=torch.float32)
        return hf_model.eval(), tokenizer
    except Exception as err:  # a broken entry is rebuilt, never fatal
        warnings.warn(f"HF weight cache entry {entry} is unusable ({err}); rebuilding it",
                      stacklevel=3)
        shutil.rmtree(entry, ignore_errors=True)
        return None

