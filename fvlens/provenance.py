"""Where a number came from: package versions and the machine, for results and benchmarks."""

from __future__ import annotations

import json
import math
import os
import platform
from importlib import metadata
from pathlib import Path

__all__ = ["versions", "machine", "write_results", "json_safe"]

_PACKAGES = ("fvlens", "transformer-lens", "torch", "transformers", "numpy")


def versions() -> dict[str, str]:
    """Installed versions of fvlens and the packages its numbers depend on."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


def machine() -> dict[str, object]:
    """CPU/GPU description of this machine."""
    import torch

    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def json_safe(value: object) -> object:
    """``value`` with every NaN or infinite float replaced by None (JSON has no such numbers:
    a reader would reject the file), recursively through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_results(out_dir: str | Path, results: dict) -> Path:
    """Write ``results`` to ``out_dir/results.json`` atomically (temp file, then rename).

    Values JSON does not know (paths, …) are written as strings; NaN and infinities as null,
    so the file is always valid JSON.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(json_safe(results), indent=1, default=str, allow_nan=False))
    tmp.replace(path)
    return path
