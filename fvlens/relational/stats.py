"""Bootstrap intervals for accuracies over items, and for the difference of two conditions on
the same items (paired: each resample draws items, not condition outcomes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["mean_ci", "paired_difference"]


def _as_array(x: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of per-item values, got shape {a.shape}")
    return a


def mean_ci(values: Sequence[float] | np.ndarray, *, n_boot: int = 1000, seed: int = 0,
            level: float = 0.95) -> dict:
    """Mean of per-item values (0/1 for accuracy) with a percentile bootstrap interval.

    Returns:
        ``{"mean", "ci95": [lo, hi] | None, "n"}`` (no interval for fewer than 2 items or
        ``n_boot=0``).
    """
    a = _as_array(values)
    out: dict = {"mean": float(a.mean()) if len(a) else None, "ci95": None, "n": int(len(a))}
    if len(a) >= 2 and n_boot > 0:
        rng = np.random.default_rng(seed)
        boots = a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
        tail = 100 * (1 - level) / 2
        out["ci95"] = [float(np.percentile(boots, tail)), float(np.percentile(boots, 100 - tail))]
    return out


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """``mean(a) - mean(b)`` over the same items, with a paired bootstrap interval and the
    share of resamples in which the difference is ≤ 0 (a one-sided bootstrap p for a > b).

    Returns:
        ``{"diff", "ci95", "p_le_0", "n"}``.
    """
    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"paired values need equal lengths, got {len(x)} and {len(y)}")
    d = x - y
    out = mean_ci(d, n_boot=n_boot, seed=seed, level=level)
    out = {"diff": out["mean"], "ci95": out["ci95"], "n": out["n"], "p_le_0": None}
    if len(d) >= 2 and n_boot > 0:
        rng = np.random.default_rng(seed)
        boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(1)
        out["p_le_0"] = float((boots <= 0).mean())
    return out
