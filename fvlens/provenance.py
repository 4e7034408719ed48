"""Where a number came from: package versions and the machine, for results and benchmarks."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

__all__ = ["versions", "machine", "write_results"]

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


def write_results(out_dir: str | Path, results: dict) -> Path:
    """Write ``results`` to ``out_dir/results.json`` atomically (temp file, then rename);
    values JSON does not know (paths, tuples of numbers' types) are written as strings."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(path)
    return path
