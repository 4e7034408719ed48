"""The numbers behind docs/families.md: every family's tiny model, measured; JSON.

    python benchmarks/families.py [--out benchmarks/results/families.json]

For each family of tests/families.py (the tests' own configs and budget function), with raw
and with folded norms (``fold_ln``, as ``fvlens.load_model`` processes checkpoints): AttnLRP
forward with and without the rules (float32 and float64, padded batch), the largest
violation of each relevance budget in float64, and fast AIE (shared-prefix path and the
key/value-cache fallback) against the reference on a padded batch. tests/test_families.py
asserts the same quantities against named tolerances; this program records their values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from aie import write_result  # noqa: E402
from families import FAMILIES, make_family, padded_batch  # noqa: E402
from test_families import _features, budget_residuals  # noqa: E402

from fvlens.attnlrp import attnlrp_hooks  # noqa: E402
from fvlens.heads.aie import (_indirect_effects_kv_cache, _shared_prefix_supported,  # noqa: E402
                              indirect_effects)
from fvlens.provenance import machine, versions  # noqa: E402


def measure(name: str, fold_ln: bool) -> dict:
    out: dict = {"family": name, "original_architecture": FAMILIES[name]["original_architecture"],
                 "fold_ln": fold_ln, "features": sorted(_features(make_family(name)))}
    batch = padded_batch()
    for dtype in (torch.float32, torch.float64):
        model = make_family(name, dtype, fold_ln=fold_ln)
        with torch.no_grad():
            plain = model(batch.tokens, attention_mask=batch.attention_mask)
            with model.hooks(fwd_hooks=attnlrp_hooks(model)):
                ruled = model(batch.tokens, attention_mask=batch.attention_mask)
        key = str(dtype).removeprefix("torch.")
        out[f"forward_bit_exact_{key}"] = bool(torch.equal(plain, ruled))
        out[f"forward_max_abs_diff_{key}"] = float((plain - ruled).abs().max())
    out["budget_max_violation_float64"] = budget_residuals(
        make_family(name, torch.float64, fold_ln=fold_ln), batch)
    model = make_family(name, fold_ln=fold_ln)
    cfg = model.cfg
    aie_batch = padded_batch(seed=2)
    mean_z = torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head,
                         generator=torch.Generator().manual_seed(1))
    ref = indirect_effects(model, aie_batch, mean_z, method="reference", progress=False)
    fast = indirect_effects(model, aie_batch, mean_z, method="fast", batch_size=2,
                            progress=False)
    with torch.no_grad():
        kv = _indirect_effects_kv_cache(model, aie_batch, mean_z, batch_size=2, progress=False)
    reason = _shared_prefix_supported(model)
    out["aie_fast_path"] = "shared prefix" if reason is None else f"kv cache ({reason})"
    out["aie_max_abs_cie"] = float(ref.abs().max())
    out["aie_fast_vs_reference_max_abs_diff"] = float((fast - ref).abs().max())
    out["aie_kv_cache_vs_reference_max_abs_diff"] = float((kv - ref).abs().max())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/families.json"))
    args = ap.parse_args()
    rows = [measure(name, fold_ln) for name in FAMILIES for fold_ln in (False, True)]
    write_result(args.out, {"benchmark": "families", "prompts": "3 random prompts of 7, 5, 9 "
                            "tokens, left-padded (tests/families.py padded_batch)",
                            "rows": rows, "machine": machine(), "versions": versions()})


if __name__ == "__main__":
    main()
