"""Peak CPU memory of one call, from the kernel's resident-set high-water mark (Linux).

How: the process is started with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc serves every
allocation of 64 KiB or more (every tensor that matters) with its own ``mmap`` and returns it to
the system on free; the resident set then follows the live tensors. Before the call the
high-water mark is reset (``echo 5 > /proc/self/clear_refs``, Linux ≥ 4.0); after it,
``VmHWM`` in ``/proc/self/status`` is the peak. ``peak - baseline`` is what the call itself
needed on top of what was already resident (weights, prompts).

``run_isolated`` runs a benchmark's worker in a fresh interpreter with that environment, so
that earlier calls leave nothing behind and timings elsewhere are not slowed by the small
mmap threshold.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["MMAP_ENV", "measure_peak", "rss_bytes", "run_isolated"]

MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.M)
    if match is None:
        raise RuntimeError(f"no {field} in /proc/self/status: peak memory needs Linux")
    return int(match.group(1))


def rss_bytes() -> int:
    """The resident set size of this process now."""
    return _status_kib("VmRSS") * 1024


def measure_peak(fn: Callable[[], object]) -> dict[str, int]:
    """Run ``fn()`` once; its peak resident memory.

    Returns:
        ``{"baseline_bytes", "peak_bytes", "peak_increment_bytes"}``: resident before, the
        high-water mark during the call, and their difference.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        raise RuntimeError("measure_peak needs MALLOC_MMAP_THRESHOLD_ set at process start: "
                           "call it through run_isolated")
    gc.collect()
    base = rss_bytes()
    Path("/proc/self/clear_refs").write_text("5")
    out = fn()
    peak = _status_kib("VmHWM") * 1024
    del out
    gc.collect()
    return {"baseline_bytes": base, "peak_bytes": peak, "peak_increment_bytes": peak - base}


def run_isolated(script: str | Path, *args: str, timeout: float = 1200) -> dict:
    """Run ``python script *args`` with ``MMAP_ENV``; parse the last stdout line as JSON."""
    env = {**os.environ, **MMAP_ENV}
    proc = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
