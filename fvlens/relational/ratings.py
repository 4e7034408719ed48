"""Human relation-similarity ratings (Chen, Peterson & Griffiths 2017) and the correlation
statistics fvlens reports against them: Spearman and Pearson with a permutation p-value and a
bootstrap confidence interval."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fvlens.tasks import Pair

__all__ = ["Rating", "read_ratings", "relation_pairs", "correlate", "COLUMNS"]

COLUMNS = ("relation1", "relation2", "comparison_type", "pair1_word1", "pair1_word2",
           "pair2_word1", "pair2_word2", "mean_rating")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rating:
    """One row of the ratings file."""

    relation1: str
    relation2: str
    comparison_type: str
    pair1: tuple[str, str]
    pair2: tuple[str, str]
    mean_rating: float
    num_ratings: int | None = None


def read_ratings(path: str | Path) -> list[Rating]:
    """Read a Chen, Peterson & Griffiths (2017) mean-ratings CSV.

    Columns: ``relation1, relation2, comparison_type, pair1_word1, pair1_word2, pair2_word1,
    pair2_word2, mean_rating[, num_ratings]``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ratings file {path} does not exist; pass the relsim "
                                "mean-ratings CSV with --ratings")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} lacks columns {sorted(missing)}; a ratings file has "
                             f"{', '.join(COLUMNS)}[, num_ratings]")
        rows = []
        for r in reader:
            n = r.get("num_ratings")
            rows.append(Rating(relation1=r["relation1"].strip(), relation2=r["relation2"].strip(),
                               comparison_type=r["comparison_type"].strip(),
                               pair1=(r["pair1_word1"].strip(), r["pair1_word2"].strip()),
                               pair2=(r["pair2_word1"].strip(), r["pair2_word2"].strip()),
                               mean_rating=float(r["mean_rating"]),
                               num_ratings=int(float(n)) if n not in (None, "") else None))
    if not rows:
        raise ValueError(f"{path} has a header but no rows")
    return rows


def relation_pairs(rows: Sequence[Rating]) -> dict[str, list[Pair]]:
    """The word pairs of each relation subtype, in first-seen order."""
    out: dict[str, dict[Pair, None]] = {}
    for r in rows:
        out.setdefault(r.relation1, {})[Pair(input=r.pair1[0], output=r.pair1[1])] = None
        out.setdefault(r.relation2, {})[Pair(input=r.pair2[0], output=r.pair2[1])] = None
    return {k: list(v) for k, v in sorted(out.items())}


# --- statistics ----------------------------------------------------------------------------


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(x, y)[0]) if np.std(x) > 0 and np.std(y) > 0 else float("nan")


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y)[0]) if np.std(x) > 0 and np.std(y) > 0 else float("nan")


def correlate(model_sim: np.ndarray, human: np.ndarray, *, n_perm: int = 1000,
              n_boot: int = 1000, seed: int = 0,
              permute: Callable[[np.random.Generator], np.ndarray] | None = None) -> dict:
    """Spearman and Pearson correlations with a permutation p-value and a bootstrap 95% CI.

    Args:
        model_sim: the model's similarity per item.
        human: the human rating per item.
        n_perm: permutations (two-sided p = (1 + #{|r_perm| ≥ |r|}) / (1 + n_perm)).
        n_boot: bootstrap resamples of the items (percentile CI).
        permute: returns a permuted ``model_sim`` (default: shuffle the items); the relation
            level passes a relation-label shuffle (Mantel test).

    Returns:
        ``{"n", "spearman": {"r", "p_perm", "ci95"}, "pearson": {...}}``.
    """
    x, y = np.asarray(model_sim, float), np.asarray(human, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"model_sim and human must be equal-length 1-D arrays, got {x.shape} "
                         f"and {y.shape}")
    rng = np.random.default_rng(seed)
    out: dict = {"n": int(len(x))}
    perms = [permute(rng) if permute else rng.permutation(x) for _ in range(n_perm)]
    boots = [rng.integers(0, len(x), len(x)) for _ in range(n_boot)]
    for name, fn in (("spearman", _spearman), ("pearson", _pearson)):
        r = fn(x, y)
        if len(x) < 3 or np.isnan(r):
            out[name] = {"r": r, "p_perm": None, "ci95": None}
            continue
        null = np.array([fn(p, y) for p in perms])
        p = (1 + int(np.sum(np.abs(null) >= abs(r) - 1e-12))) / (1 + n_perm)
        bs = np.array([fn(x[b], y[b]) for b in boots])
        bs = bs[~np.isnan(bs)]
        ci = [float(np.percentile(bs, 2.5)), float(np.percentile(bs, 97.5))] if len(bs) else None
        out[name] = {"r": r, "p_perm": p, "ci95": ci}
    return out
