"""Vectors as files that know their model: FVs, DFVs, head scores and raw vectors.

A vector file is one safetensors file: its tensors, and in the header's metadata a JSON object
with the kind of vector, its settings (heads, layer, scale, task, selection method, …), the
fvlens version and the **fingerprint** of the model it was made on (``fvlens.models.fingerprint``:
architecture numbers, processing flags and a hash of a few fixed weight slices).
``load_vector(path, model)`` refuses a file made on another model with a message naming both
(``strict=False`` applies it anyway, with a warning). No pickle.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor

from fvlens.heads.scores import HeadScores
from fvlens.models import fingerprint, fingerprint_mismatch
from fvlens.modeltype import Model
from fvlens.steering import DistributedFV, FunctionVector

__all__ = ["save_vector", "load_vector", "read_vector_meta", "FORMAT", "FORMAT_VERSION"]

FORMAT = "fvlens-vector"
FORMAT_VERSION = 1
Saved = FunctionVector | DistributedFV | HeadScores | Tensor


def _parts(vector: Saved) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
    if isinstance(vector, FunctionVector):
        return "fv", {"vector": vector.vector}, {"heads": [list(h) for h in vector.heads],
                                                 "layer": vector.layer}
    if isinstance(vector, DistributedFV):
        return "dfv", {"means": vector.means}, {"heads": [list(h) for h in vector.heads]}
    if isinstance(vector, HeadScores):
        d = vector.to_json()
        return "head_scores", {"scores": vector.scores}, {k: v for k, v in d.items()
                                                          if k not in ("scores", "per_task")}
    if isinstance(vector, Tensor):
        return "tensor", {"vector": vector}, {}
    raise ValueError(f"cannot save a {type(vector).__name__}; save a FunctionVector, "
                     "DistributedFV, HeadScores or a tensor")


def save_vector(vector: Saved, path: str | Path, model: Model, *,
                meta: dict[str, Any] | None = None) -> Path:
    """Write ``vector`` and the fingerprint of ``model`` to ``path`` (a ``.safetensors`` file).

    Args:
        vector: a FunctionVector, DistributedFV, HeadScores or a plain tensor.
        path: the file to write (parent folders are created; written atomically).
        model: the model the vector was made on.
        meta: extra JSON-able settings to record (task, method, scale, …).

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    from fvlens.provenance import versions

    kind, tensors, fields = _parts(vector)
    header = {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind,
              "fvlens": versions()["fvlens"],
              "fingerprint": fingerprint(model), "fields": fields, "meta": dict(meta or {})}
    try:
        text = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"meta must be JSON-serialisable to save a vector: {err}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"fvlens": text})
    tmp.replace(path)
    return path


def read_vector_meta(path: str | Path) -> dict[str, Any]:
    """The JSON header of a vector file (kind, fields, meta, fingerprint), without its tensors.

    Raises:
        FileNotFoundError: no such file. ValueError: not a vector file of this format.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no vector file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get("fvlens")
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from None
    header = json.loads(text) if text else None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path} is not an fvlens vector file; write one with "
                         "fvlens.vectors.save_vector")
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} has vector format version {header.get('version')}; this "
                         f"fvlens reads version {FORMAT_VERSION}")
    return header


def load_vector(path: str | Path, model: Model | None = None, *,
                strict: bool = True) -> Saved:
    """Read a vector file, checking that it was made on ``model``.

    Args:
        path: a file written by ``save_vector``.
        model: the model it will be applied to; None skips the check.
        strict: refuse a file made on another model (ValueError naming both); False warns.

    Returns:
        The FunctionVector, DistributedFV, HeadScores or tensor that was saved.
    """
    from safetensors.torch import load_file

    header = read_vector_meta(path)
    if model is not None:
        mismatch = fingerprint_mismatch(header["fingerprint"], fingerprint(model))
        if mismatch:
            text = (f"{path} was saved on another model than the one given ({mismatch}); "
                    "load it onto the model it was made on, or pass strict=False to apply it "
                    "anyway")
            if strict:
                raise ValueError(text)
            warnings.warn(text, stacklevel=2)
    tensors = load_file(str(path))
    kind, fields = header["kind"], header["fields"]
    heads = tuple((int(a), int(b)) for a, b in fields.get("heads", ()))
    if kind == "fv":
        return FunctionVector(vector=tensors["vector"], heads=heads, layer=fields.get("layer"))
    if kind == "dfv":
        return DistributedFV(heads=heads, means=tensors["means"])
    if kind == "head_scores":
        scores = tensors["scores"]
        return HeadScores.from_json(fields | {"scores": scores.double().tolist(),
                                              "per_task": None})
    if kind == "tensor":
        return tensors["vector"]
    raise ValueError(f"{path} holds a vector of unknown kind {kind!r}")
