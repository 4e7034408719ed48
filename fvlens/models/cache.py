"""The weight cache: one folder per converted model, float32, checked cheaply on every read.

An entry ``<name>-<key>/`` holds ``weights.safetensors`` (the processed float32 state dict:
rotary tables stored once per attention type, MLP/unembedding matrices stored transposed so
they load in the fast layout without a copy), ``tokenizer/`` and ``meta.json``. The key hashes
the source's identity, the processing flags, ``CONVERSION_VERSION``, the cache format and the
package versions, so an entry made by another conversion is never reused. Entries are float32
whatever dtype is asked for: the expensive conversion is shared by every dtype and a cast at
load is cheap (see docs/models.md).

``meta.json`` carries ``content`` (config, source, processing, layout, versions),
``content_sha256`` (also written into the safetensors header) and the identity of the weights
file (and of a user's GGUF source). A read checks: the content hash against meta and header
(an edited meta.json is caught), the versions and key fields, and the files' identities
(``fvlens.models.identity``: size, mtime and edge hash; a whole hash only when the mtime moved).
Anything off: a warning, the entry is removed and rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformerConfig

from fvlens.models import atomic
from fvlens.models.build import TRANSPOSED, share_equal_buffers
from fvlens.models.identity import FileIdentity, identify, verify
from fvlens.models.specs import Source
from fvlens.provenance import versions

__all__ = ["FORMAT", "Entry", "entry_path", "read_entry", "write_entry", "CacheError"]

log = logging.getLogger(__name__)

FORMAT = 2
WEIGHTS, META, TOKENIZER = "weights.safetensors", "meta.json", "tokenizer"


class CacheError(ValueError):
    """An entry that cannot be used (the reason is the message)."""


@dataclasses.dataclass(kw_only=True)
class Entry:
    """A cache entry read back: config, float32 state (CPU or ``device``), tokenizer, meta."""

    cfg: HookedTransformerConfig
    state: dict[str, torch.Tensor]
    tokenizer: Any | None
    content: dict[str, Any]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def entry_path(root: Path, source: Source, processing: dict[str, bool],
               conversion_version: int) -> Path:
    """The folder of the entry for this source, processing and conversion."""
    ident = _canonical([FORMAT, conversion_version, source.kind, source.name, source.key,
                        processing, versions()])
    safe = source.name.replace("/", "--")
    return root / f"{safe}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def _cfg_to_json(cfg: HookedTransformerConfig) -> dict[str, Any]:
    d = dict(cfg.to_dict())
    d["dtype"] = str(d["dtype"]).removeprefix("torch.")
    d["device"] = None
    return {k: v for k, v in d.items() if k not in ("n_params",)}


def _cfg_from_json(d: dict[str, Any]) -> HookedTransformerConfig:
    d = dict(d)
    d["dtype"] = getattr(torch, d["dtype"])
    d["device"] = "cpu"
    return HookedTransformerConfig.from_dict(d)


def _layout(state: dict[str, torch.Tensor], buffers: set[str]) -> tuple[dict, dict, list]:
    """Tensors to store (unique, contiguous), the shared-buffer map and the transposed names."""
    state = dict(state)
    shared = share_equal_buffers(state, buffers)
    stored: dict[str, torch.Tensor] = {}
    transposed: list[str] = []
    for key, t in state.items():
        if key in shared:
            continue
        if key.rsplit(".", 1)[-1] in TRANSPOSED and t.dim() == 2:
            stored[key] = t.T.contiguous()
            transposed.append(key)
        else:
            stored[key] = t.contiguous()
    return stored, shared, transposed


def write_entry(entry: Path, *, cfg: HookedTransformerConfig, state: dict[str, torch.Tensor],
                buffers: set[str], tokenizer, source: Source, source_file: Path | None,
                processing: dict[str, bool], conversion_version: int,
                info: dict[str, Any]) -> bool:
    """Write an entry atomically (temp folder renamed into place). Never raises for I/O.

    Returns:
        True when the entry is in place (written by us or, concurrently, by another process).
    """
    from safetensors.torch import save_file

    root = entry.parent
    try:
        atomic.sweep_stale(root, entry.name)
        with atomic.temp_dir(root, entry.name) as tmp:
            stored, shared, transposed = _layout(state, buffers)
            has_bos = tokenizer is not None and tokenizer.bos_token is not None
            content = {
                "source": dataclasses.asdict(source), "processing": processing,
                "conversion_version": conversion_version, "format": FORMAT,
                "versions": versions(), "cfg": _cfg_to_json(cfg), "info": info,
                "layout": {"shared": shared, "transposed": sorted(transposed)},
                "tokenizer": {"saved": tokenizer is not None, "add_bos_token": has_bos},
            }
            digest = hashlib.sha256(_canonical(content).encode()).hexdigest()
            save_file(stored, str(tmp / WEIGHTS), metadata={"fvlens_content_sha256": digest})
            del stored
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp / TOKENIZER))
            meta = {"format": FORMAT, "content": content, "content_sha256": digest,
                    "weights": identify(tmp / WEIGHTS).to_dict(),
                    "source_file": identify(source_file).to_dict() if source_file else None}
            (tmp / META).write_text(json.dumps(meta, indent=1))
            atomic.publish(tmp, entry)
            # The rename keeps mtimes, so the recorded weights identity stays valid.
        return True
    except OSError as err:
        warnings.warn(f"could not write the weight cache at {entry}: {err}", stacklevel=3)
        return False


def _header_digest(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CacheError("weights file is truncated")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise CacheError("weights file header is corrupt")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except ValueError as err:
        raise CacheError(f"weights file header is corrupt ({err})") from None
    return (header.get("__metadata__") or {}).get("fvlens_content_sha256")


def _check_meta(entry: Path, source: Source, processing: dict[str, bool],
                conversion_version: int) -> dict[str, Any]:
    try:
        meta = json.loads((entry / META).read_text())
    except (OSError, ValueError) as err:
        raise CacheError(f"meta.json is unreadable ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CacheError("meta.json is not of this cache format")
    content = meta.get("content")
    digest = hashlib.sha256(_canonical(content).encode()).hexdigest()
    if digest != meta.get("content_sha256"):
        raise CacheError("meta.json was edited (its content does not match its hash)")
    if _header_digest(entry / WEIGHTS) != digest:
        raise CacheError("meta.json does not describe these weights (hash differs from the "
                         "weights file's header)")
    expected = {"source": _where_free(dataclasses.asdict(source)), "processing": processing,
                "conversion_version": conversion_version, "versions": versions()}
    for key, value in expected.items():
        found = content.get(key)
        if key == "source" and isinstance(found, dict):
            found = _where_free(found)
        if found != value:
            raise CacheError(f"stale entry ({key} differs)")
    return meta


def _where_free(source: dict[str, Any]) -> dict[str, Any]:
    """A source without its path: a moved file is the same source (its identity is checked)."""
    return {k: v for k, v in source.items() if k != "path"}


def _refresh(entry: Path, meta: dict[str, Any], field: str, ident: FileIdentity) -> None:
    meta = dict(meta, **{field: ident.to_dict()})
    try:
        with atomic.temp_file(entry, META) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
            atomic.publish(tmp, entry / META)
    except OSError as err:  # a read-only shared cache: the next read hashes again
        log.debug("could not refresh %s: %s", entry / META, err)


def _check_files(entry: Path, meta: dict[str, Any], source_file: Path | None) -> None:
    same, refreshed = verify(entry / WEIGHTS, FileIdentity.from_dict(meta["weights"]))
    if not same:
        raise CacheError("weights file changed or is corrupt (size, edges or sha256 differ)")
    if refreshed is not None:
        _refresh(entry, meta, "weights", refreshed)
    if source_file is not None and meta.get("source_file"):
        same, refreshed = verify(source_file, FileIdentity.from_dict(meta["source_file"]))
        if not same:
            raise CacheError(f"the source file {source_file} changed since the conversion")
        if refreshed is not None:
            _refresh(entry, meta, "source_file", refreshed)


def read_entry(entry: Path, *, source: Source, source_file: Path | None,
               processing: dict[str, bool], conversion_version: int,
               device: str | torch.device = "cpu") -> Entry | None:
    """The entry's contents, or None when absent or unusable (then warned and removed).

    Args:
        device: where the weight tensors are read to (float32).
    """
    atomic.sweep_stale(entry.parent, entry.name)  # temp folders of dead writers
    if not entry.exists():
        return None
    try:
        meta = _check_meta(entry, source, processing, conversion_version)
        _check_files(entry, meta, source_file)
        return _load(entry, meta["content"], device)
    except Exception as err:  # a broken entry is rebuilt, never fatal (safetensors, JSON, …)
        warnings.warn(f"weight cache entry {entry} is unusable ({err}); rebuilding it",
                      stacklevel=3)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def _load(entry: Path, content: dict[str, Any], device) -> Entry:
    from safetensors.torch import load_file

    cfg = _cfg_from_json(content["cfg"])
    stored = load_file(str(entry / WEIGHTS), device=str(device))
    layout = content["layout"]
    state = {}
    for key in layout["transposed"]:
        state[key] = stored.pop(key).T
    state.update(stored)
    for key, same in layout["shared"].items():
        state[key] = state[same]
    tokenizer = None
    tok = content["tokenizer"]
    if tok["saved"]:
        tokenizer = load_tokenizer(entry / TOKENIZER, tok["add_bos_token"])
    return Entry(cfg=cfg, state=state, tokenizer=tokenizer, content=content)


def load_tokenizer(folder: Path, add_bos_token: bool):
    """A saved tokenizer, loaded the way TransformerLens wants it (``add_bos_token=True``
    when it has a BOS token), so ``set_tokenizer`` does not load it a second time."""
    from transformers import AutoTokenizer

    if add_bos_token:
        try:
            return AutoTokenizer.from_pretrained(str(folder), add_bos_token=True)
        except ValueError:  # tokenizers that cannot express it; TL keeps them as they are
            pass
    return AutoTokenizer.from_pretrained(str(folder))
