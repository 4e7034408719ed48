"""benchmarks/gpu_check.sh and .py refuse to run without CUDA: exit 2, one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = "gpu_check: no CUDA device visible"


def _no_cuda_env() -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable,
               PYTHONPATH=str(ROOT))
    return env


def test_gpu_check_sh_fails_clearly_without_cuda(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)],
                          env=_no_cuda_env(), capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(MESSAGE), proc.stderr
    assert "GPU machine" in lines[0] and not out.exists()


def test_gpu_check_py_fails_clearly_without_cuda(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                           "--out", str(out)], env=_no_cuda_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(MESSAGE)
    assert not out.exists()
