"""A model's fingerprint: what a saved vector records about the model it came from.

``fingerprint(model)`` is a small JSON-able dict: the spec and name, the architecture numbers,
the processing flags, the dtype, and a sample of a few fixed weight slices (4×4 corners of the
embedding, unembedding and first/middle/last layers' matrices) with its sha256. Computing it
reads a few hundred numbers (no pass over the weights).

``fingerprint_mismatch(a, b)`` says in words how two fingerprints differ, or None when they
are the same model. Same model means: equal architecture numbers and processing flags, and
equal weight samples: bit-equal in the same dtype, and equal to within the coarser dtype's
rounding (one unit in the last place) across dtypes, so a bfloat16 load of a model matches its
float32 load. The spec and name do not decide: the same file loaded by embedded name and by
path is the same model.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from transformer_lens import HookedTransformer

__all__ = ["FINGERPRINT_VERSION", "fingerprint", "fingerprint_mismatch"]

FINGERPRINT_VERSION = 1

_ARCH = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "d_vocab", "n_key_value_heads",
         "n_ctx", "original_architecture", "normalization_type", "positional_embedding_type",
         "act_fn", "gated_mlp")
# Relative size of one unit in the last place, and the smallest normal magnitude's spacing.
_ULP = {"float32": (2.0 ** -23, 1e-45), "bfloat16": (2.0 ** -7, 1e-40),
        "float16": (2.0 ** -10, 2.0 ** -24), "float64": (2.0 ** -52, 1e-300)}


def _slices(model: HookedTransformer) -> list[tuple[str, torch.Tensor]]:
    params = dict(model.named_parameters())
    n = model.cfg.n_layers
    names = ["embed.W_E", "unembed.W_U"]
    for layer in sorted({0, n // 2, n - 1}):
        names += [f"blocks.{layer}.attn.W_Q", f"blocks.{layer}.attn.W_O",
                  f"blocks.{layer}.mlp.W_out"]
    out = []
    for name in names:
        p = params.get(name)
        if p is None:
            continue
        index = (0,) * (p.dim() - 2) + (slice(0, 4),) * min(p.dim(), 2)  # a 4x4 corner
        out.append((name, p[index]))
        if name.startswith(("embed", "unembed")):  # a middle block of the vocabulary too
            mid = p.shape[0 if name.startswith("embed") else 1] // 2
            rows = (slice(mid, mid + 4), slice(0, 4)) if name.startswith("embed") else \
                (slice(0, 4), slice(mid, mid + 4))
            out.append((name + "[mid]", p[rows]))
    return out


def fingerprint(model: HookedTransformer) -> dict[str, Any]:
    """The identity of a loaded model, for saved vectors and results.

    Returns:
        ``{"version", "spec", "name", "architecture": {...}, "processing", "dtype",
        "weights_sample": {slice name: [floats]}, "weights_sha256"}`` (JSON-able).
    """
    meta = getattr(model, "fvlens_meta", {}) or {}
    cfg = model.cfg
    dtype = next(model.parameters()).dtype
    sample: dict[str, list[float]] = {}
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in _slices(model):
            values = t.detach().to(device="cpu", dtype=torch.float32).contiguous()
            h.update(name.encode() + b"\0" + values.numpy().tobytes())
            sample[name] = [float(v) for v in values.flatten()]
    return {
        "version": FINGERPRINT_VERSION,
        "spec": meta.get("spec"),
        "name": meta.get("name", cfg.model_name),
        "architecture": {k: getattr(cfg, k, None) for k in _ARCH},
        "processing": meta.get("processing"),
        "dtype": str(dtype).removeprefix("torch."),
        "weights_sample": sample,
        "weights_sha256": h.hexdigest()[:16],
    }


def _label(fp: dict[str, Any]) -> str:
    arch = fp.get("architecture", {})
    return (f"{fp.get('name')!s} ({arch.get('original_architecture')}, {arch.get('n_layers')} "
            f"layers, d_model {arch.get('d_model')}, {fp.get('dtype')}, weights "
            f"{fp.get('weights_sha256')})")


def _samples_close(a: dict[str, list[float]], b: dict[str, list[float]], rtol: float,
                   atol: float) -> str | None:
    if set(a) != set(b):
        return f"weight slices {sorted(set(a) ^ set(b))} exist in only one"
    for name in a:
        if len(a[name]) != len(b[name]):
            return f"weights {name} differ in shape"
        for x, y in zip(a[name], b[name]):
            if not (math.isclose(x, y, rel_tol=rtol, abs_tol=atol)
                    or (math.isnan(x) and math.isnan(y))):
                return f"weights differ ({name}: {x:.6g} vs {y:.6g})"
    return None


def fingerprint_mismatch(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """How two fingerprints differ, in words naming both models; None for the same model.

    A dtype difference alone is not a different model: the weight samples are then compared
    within one unit in the last place of the coarser dtype.
    """
    reasons = []
    arch_a, arch_b = a.get("architecture", {}), b.get("architecture", {})
    for key in sorted(set(arch_a) | set(arch_b)):
        if arch_a.get(key) != arch_b.get(key):
            reasons.append(f"{key} {arch_a.get(key)} vs {arch_b.get(key)}")
    if a.get("processing") != b.get("processing"):
        reasons.append(f"processing {a.get('processing')} vs {b.get('processing')}")
    if not reasons:
        if a.get("dtype") == b.get("dtype"):
            if a.get("weights_sha256") != b.get("weights_sha256"):
                reasons.append("weights differ")
        else:
            ua = _ULP.get(a.get("dtype"), _ULP["bfloat16"])
            ub = _ULP.get(b.get("dtype"), _ULP["bfloat16"])
            why = _samples_close(a.get("weights_sample", {}), b.get("weights_sample", {}),
                                 rtol=max(ua[0], ub[0]), atol=max(ua[1], ub[1]))
            if why:
                reasons.append(why)
    if not reasons:
        return None
    return f"different models: {_label(a)} and {_label(b)}: " + "; ".join(reasons)
