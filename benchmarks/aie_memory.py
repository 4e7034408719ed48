"""Peak memory of fast AIE's key/value-cache fallback, before and after sharing the prefix.

    python benchmarks/aie_memory.py [--out benchmarks/results/aie_memory.json]

Before: every layer's prefix keys and values were repeated once per head row
(``repeat_interleave(n_heads)``, the removed ``_repeat_cache``), i.e.
2 * n_layers * prompts * n_heads * prefix * n_kv_heads * d_head floats held at once. After:
each prompt's prefix is stored once and each block call builds its rows' keys in one tensor
(``_SharedPrefixEntry``). The "before" variant is that same code with the shared entries
swapped for repeated copies, so the two differ in nothing else; their CIEs are compared.
Also measured: the shared-prefix path (what every tested family now takes) and one plain
forward pass of the same prompts, as the unit.

Each measurement runs in a fresh process on a tiny random Gemma-2-style model (post-norms,
local/global layers, soft-caps, GQA) of growing depth. Peak memory is the growth of the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs after a warm-up call)
over its resident set before the call, with glibc's mmap threshold fixed at 64 KiB so that
freed tensors go back to the system (Linux only). One thread per process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fvlens, not an installed one

VARIANTS = ("forward", "shared_prefix", "kv_cache_copying", "kv_cache_shared")
SETTINGS = dict(prompts=8, prompt_tokens=100, batch_size=8, d_model=512, n_heads=8,
                n_key_value_heads=4, d_head=64, d_mlp=1024, d_vocab=1000, window_size=64)
DEPTHS = (4, 8, 16)


def _config(n_layers: int):
    from transformer_lens import HookedTransformerConfig

    s = SETTINGS
    return HookedTransformerConfig(
        n_layers=n_layers, d_model=s["d_model"], n_heads=s["n_heads"], d_head=s["d_head"],
        n_key_value_heads=s["n_key_value_heads"], d_mlp=s["d_mlp"], d_vocab=s["d_vocab"],
        n_ctx=256, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
        positional_embedding_type="rotary", rotary_dim=s["d_head"], gated_mlp=True,
        final_rms=True, use_normalization_before_and_after=True, use_local_attn=True,
        window_size=s["window_size"], attn_types=["local", "global"] * (n_layers // 2),
        attn_scores_soft_cap=50.0, output_logits_soft_cap=30.0,
        original_architecture="Gemma2ForCausalLM", seed=0)


def _batch(n: int, width: int, vocab: int):
    import torch

    from fvlens.batch import PromptBatch
    from fvlens.tasks import Pair

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, vocab, (n, width), generator=g)
    mask = torch.ones(n, width, dtype=torch.long)
    for i in range(n):  # ragged, left-padded: row i loses i tokens
        tokens[i, :i], mask[i, :i] = 0, 0
    return PromptBatch(tokens=tokens, attention_mask=mask,
                       targets=torch.randint(1, vocab, (n,), generator=g), texts=("",) * n,
                       queries=(Pair(input="a", output="b"),) * n, frame_positions=((),) * n,
                       context_positions=((),) * n, kind="icl")


def _copying(cache, n_rows):
    """The pre-change cache: every layer's prefix repeated once per row."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    entries = [TransformerLensKeyValueCacheEntry(
        past_keys=e.past_keys.repeat_interleave(n_rows, dim=0),
        past_values=e.past_values.repeat_interleave(n_rows, dim=0), frozen=True)
        for e in cache.entries]
    return TransformerLensKeyValueCache(
        entries=entries, frozen=True,
        previous_attention_mask=cache.previous_attention_mask.repeat_interleave(n_rows, dim=0))


def _rss(key: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) * 1024


def child(variant: str, n_layers: int) -> dict:
    """One measurement in this (fresh) process."""
    import torch
    from transformer_lens import HookedTransformer

    import fvlens.heads.aie as aie
    from fvlens.forward import forward_last

    torch.manual_seed(0)
    model = HookedTransformer(_config(n_layers)).eval()
    cfg = model.cfg
    batch = _batch(SETTINGS["prompts"], SETTINGS["prompt_tokens"], cfg.d_vocab)
    mean_z = torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head,
                         generator=torch.Generator().manual_seed(1))
    if variant == "kv_cache_copying":
        aie._rows_sharing_prefix = _copying

    def run(b):
        with torch.no_grad():
            if variant == "forward":
                return forward_last(model, b.tokens, b.attention_mask)
            if variant == "shared_prefix":
                return aie._indirect_effects_shared_prefix(
                    model, b, mean_z, batch_size=SETTINGS["batch_size"], progress=False)
            return aie._indirect_effects_kv_cache(model, b, mean_z,
                                                  batch_size=SETTINGS["batch_size"],
                                                  progress=False)

    run(batch.select([0, 1]))  # warm-up: one-off allocations are not the call's
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _rss("VmRSS")
    t0 = time.perf_counter()
    out = run(batch)
    seconds = time.perf_counter() - t0
    peak = _rss("VmHWM") - before
    return {"variant": variant, "n_layers": n_layers, "peak_mib": peak / 2**20,
            "seconds": seconds, "result": out.tolist() if variant != "forward" else None}


def _copied_cache_mib(n_layers: int) -> float:
    s = SETTINGS
    prefix = s["prompt_tokens"] - 1
    floats = 2 * n_layers * s["batch_size"] * s["n_heads"] * prefix * s["n_key_value_heads"] \
        * s["d_head"]
    return floats * 4 / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/aie_memory.json"))
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "N_LAYERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    if not Path("/proc/self/clear_refs").exists():
        sys.exit("aie_memory.py measures peak RSS through /proc/self/clear_refs (Linux only)")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    rows = []
    for n_layers in DEPTHS:
        results = {}
        for variant in VARIANTS:
            proc = subprocess.run([sys.executable, __file__, "--child", variant, str(n_layers)],
                                  env=env, capture_output=True, text=True, check=True)
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        import torch

        copying = torch.tensor(results["kv_cache_copying"]["result"])
        shared = torch.tensor(results["kv_cache_shared"]["result"])
        fast = torch.tensor(results["shared_prefix"]["result"])
        row = {"n_layers": n_layers, "copied_cache_mib_formula": _copied_cache_mib(n_layers),
               **{f"{v}_peak_mib": round(results[v]["peak_mib"], 1) for v in VARIANTS},
               **{f"{v}_seconds": round(results[v]["seconds"], 3) for v in VARIANTS},
               "kv_cache_shared_vs_copying_max_abs_diff": float((shared - copying).abs().max()),
               "shared_prefix_vs_kv_cache_max_abs_diff": float((fast - shared).abs().max())}
        row["kv_cache_peak_reduction"] = round(
            row["kv_cache_copying_peak_mib"] / row["kv_cache_shared_peak_mib"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from aie import write_result

    from fvlens.provenance import machine, versions

    write_result(args.out, {
        "benchmark": "aie_memory", "model": "tiny random Gemma-2-style (see _config)",
        "settings": SETTINGS, "depths": list(DEPTHS),
        "method": "peak RSS growth over the call (VmHWM reset after a warm-up), fresh process "
                  "per variant, MALLOC_MMAP_THRESHOLD_=65536, one thread",
        "rows": rows, "machine": machine(), "versions": versions()})


if __name__ == "__main__":
    main()
