"""Where a number came from: package versions and the machine, for results and benchmarks."""

from __future__ import annotations

import os
import platform
from importlib import metadata

__all__ = ["versions", "machine"]

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
