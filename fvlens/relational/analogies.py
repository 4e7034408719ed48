"""Analogies A:B::C:? solved with composite function vectors, against their baselines.

Each item is scored in two formats: multiple choice (each choice ``C_j:D_j`` scores Σ_t log
p(D_j token t | steered ``Q: C_j\\nA:``), the highest wins; ``mc_pmi`` subtracts each choice's
unsteered score, so a pair that is likely anyway gains nothing) and generative (the first
token of ``" " + D``, and the whole of D, are the greedy continuation of the right choice's
steered prompt). The edit is made at the prompt's last token only.

Conditions: ``none``; ``icl`` (``Q: A\\nA: B\\n\\n`` as the one demonstration); ``single_best``
(the bank vector that alone gives B the highest probability on ``Q: A\\nA:``); ``oracle`` (the
vector of the item's relation; in-bank items only) and every composite variant of
``fvlens.relational.composite``. The items split (seeded, by relation) into validation and
test; each variant's options (its grid) and the reported ``composite`` variant are chosen on
validation, and everything is reported on test with bootstrap intervals, the chosen variant's
difference to ``single_best`` with a paired one.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from fvlens.modeltype import Model

from fvlens.relational.bank import RelationBank
from fvlens.relational.composite import (VARIANTS, CompositeConfig, bank_similarity,
                                         composite_edits, fit_weights, pair_deltas, renormalize,
                                         similarity_weights, top_m_weights)
from fvlens.relational.items import AnalogyItem, split_items
from fvlens.relational.scoring import RowScorer, choice_scorer, stem_scorer
from fvlens.relational.stats import mean_ci, paired_difference
from fvlens.tasks import Pair

__all__ = ["AnalogyConfig", "CONDITIONS", "METRICS", "evaluate_analogies", "stem_logprobs"]

BASELINES = ("none", "icl", "single_best", "oracle")
CONDITIONS = BASELINES + VARIANTS
METRICS = ("mc", "mc_pmi", "generative", "exact")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnalogyConfig:
    """How the analogy evaluation splits items and which options each variant tries.

    Attributes:
        fit: the fitted variants' settings (``init`` is tried from ``inits``).
        val_fraction / seed: the validation share of the items and the split's seed.
        inits: starts of the fitted variants (softmax, affine).
        taus: temperatures of ``similarity``.
        ms: mixture sizes of ``top_m`` (those above the bank's size are skipped).
        renorm: whether mixtures are tried rescaled to their vectors' mean norm.
        select_on: the validation metric that chooses options and the reported variant.
        n_boot: bootstrap resamples of every interval.
    """

    fit: CompositeConfig = CompositeConfig()
    val_fraction: float = 0.3
    seed: int = 0
    inits: tuple[str, ...] = ("uniform", "best")
    taus: tuple[float, ...] = (0.05, 0.1, 0.2)
    ms: tuple[int, ...] = (2, 3, 5)
    renorm: tuple[bool, ...] = (False, True)
    select_on: str = "mc"
    n_boot: int = 1000

    def __post_init__(self) -> None:
        if self.select_on not in METRICS:
            raise ValueError(f"select_on must be one of {METRICS}, got {self.select_on!r}")
        if not (self.inits and self.taus and self.ms and self.renorm):
            raise ValueError("every option grid needs at least one value")


def stem_logprobs(stems: RowScorer, bank: RelationBank) -> Tensor:
    """``[n_items, n_bank]``: log p(B | ``Q: A\\nA:`` with bank vector i alone)."""
    cols = []
    with torch.no_grad():
        for v in bank.vectors:
            _, sc = stems.scores({int(v.layer): v.vector.float()})
            cols.append(sc.logprob)
    return torch.stack(cols, 1)


def _outcomes(scorer: RowScorer, items: Sequence[AnalogyItem], rows: list[int], sc,
              base: Tensor) -> dict[str, np.ndarray]:
    """Per item (NaN where not scored): mc, mc_pmi, generative, exact."""
    out = {k: np.full(len(items), np.nan) for k in METRICS}
    by: dict[int, list[int]] = {}
    for j, r in enumerate(rows):
        by.setdefault(int(scorer.owner[r]), []).append(j)
    for i, js in by.items():
        lp = sc.logprob[js]
        pmi = lp - base[[rows[j] for j in js]]
        ans = items[i].answer
        out["mc"][i] = float(int(lp.argmax()) == ans)
        out["mc_pmi"][i] = float(int(pmi.argmax()) == ans)
        out["generative"][i] = float(sc.first_top1[js[ans]])
        out["exact"][i] = float(sc.exact[js[ans]])
    return out


def evaluate_analogies(model: Model, items: Sequence[AnalogyItem],
                       bank: RelationBank, *, cfg: AnalogyConfig = AnalogyConfig(),
                       conditions: Sequence[str] = CONDITIONS, progress: bool = True) -> dict:
    """Every condition on the items: options chosen on validation, all reported on test.

    Returns:
        ``{"n_items", "bank", "split", "test": {cond: {metric: mean_ci}}, "val": {cond:
        {metric: mean}}, "options": {variant: {"chosen", "grid"}}, "composite": {"variant",
        "vs_single_best": {metric: paired_difference}}, "by_group": {...}, "by_relation":
        {...}, "single_best_is_true_relation"}``.
    """
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions {sorted(unknown)}; choose from {CONDITIONS}")
    items = list(items)
    val_idx, test_idx = split_items(items, val_fraction=cfg.val_fraction, seed=cfg.seed)
    start = min(bank.layers) + 1
    choices = choice_scorer(model, items, start=start)
    stems = stem_scorer(model, items, start=start)
    eye = torch.eye(len(bank))
    per: dict[str, dict[str, np.ndarray]] = {}
    options: dict[str, dict] = {}
    with torch.no_grad():
        rows, base_sc = choices.scores()
    base = base_sc.logprob
    logp = stem_logprobs(stems, bank)
    in_bank = np.array([it.relation in bank.names for it in items])

    def run(w: Tensor) -> dict[str, np.ndarray]:
        with torch.no_grad():
            r, sc = choices.scores(composite_edits(bank, w))
        return _outcomes(choices, items, r, sc, base)

    def choose(name: str, grid: dict[str, dict[str, np.ndarray]]) -> None:
        score = {k: (np.nanmean(v[cfg.select_on][val_idx]), np.nanmean(v["generative"][val_idx]))
                 for k, v in grid.items()}
        best = max(score, key=lambda k: score[k])  # first in grid order among ties
        per[name] = grid[best]
        options[name] = {"chosen": best, "grid": {k: {"val_" + cfg.select_on: s[0],
                                                      "val_generative": s[1]}
                                                  for k, s in score.items()}}

    deltas = None
    bar = tqdm(conditions, desc="analogies", disable=not progress)
    for cond in bar:
        bar.set_postfix_str(cond)
        if cond == "none":
            per[cond] = _outcomes(choices, items, rows, base_sc, base)
        elif cond == "icl":
            demo = choice_scorer(model, items, start=model.cfg.n_layers, demo=True)
            with torch.no_grad():
                r, sc = demo.scores()
            per[cond] = _outcomes(demo, items, r, sc, base)
        elif cond == "single_best":
            per[cond] = run(eye[logp.argmax(1).to(eye.device)])
        elif cond == "oracle":
            idx = torch.tensor([bank.index(it.relation) if m else 0
                                for it, m in zip(items, in_bank)])
            out = run(eye[idx])
            per[cond] = {k: np.where(in_bank, v, np.nan) for k, v in out.items()}
        elif cond in ("softmax", "affine"):
            choose(cond, {f"init={init}": run(fit_weights(
                stems, bank, dataclasses.replace(cfg.fit, init=init), affine=cond == "affine",
                logp=logp)) for init in cfg.inits})
        elif cond == "similarity":
            if deltas is None:
                deltas = pair_deltas(model, [Pair(input=it.stem[0], output=it.stem[1])
                                             for it in items], bank.layers)
            sim = bank_similarity(deltas, bank)
            grid = {}
            for tau, rn in itertools.product(cfg.taus, cfg.renorm):
                w = similarity_weights(sim, tau)
                grid[f"tau={tau},renorm={rn}"] = run(renormalize(bank, w) if rn else w)
            choose(cond, grid)
        else:  # top_m
            grid = {}
            for m, rn in itertools.product([m for m in cfg.ms if m <= len(bank)], cfg.renorm):
                w = top_m_weights(logp, m)
                grid[f"m={m},renorm={rn}"] = run(renormalize(bank, w) if rn else w)
            if grid:
                choose(cond, grid)
    return _report(items, bank, per, options, val_idx, test_idx, in_bank, logp, cfg)


def _report(items, bank, per, options, val_idx, test_idx, in_bank, logp, cfg) -> dict:
    boot = dict(n_boot=cfg.n_boot, seed=cfg.seed)

    def on(idx, fn):
        return {c: {k: fn(v[k][idx][~np.isnan(v[k][idx])]) for k in METRICS}
                for c, v in per.items()}

    result: dict = {
        "n_items": len(items), "bank": list(bank.names),
        "split": {"val": len(val_idx), "test": len(test_idx), "val_fraction": cfg.val_fraction,
                  "seed": cfg.seed},
        "test": on(test_idx, lambda a: mean_ci(a, **boot)),
        "val": on(val_idx, lambda a: float(a.mean()) if len(a) else None),
        "options": options,
    }
    fitted = [c for c in VARIANTS if c in per]
    if fitted:
        chosen = max(fitted, key=lambda c: (result["val"][c][cfg.select_on],
                                            result["val"][c]["generative"]))
        comp = {"variant": chosen, "selected_on": f"val {cfg.select_on}"}
        if "single_best" in per:
            comp["vs_single_best"] = {
                k: paired_difference(per[chosen][k][test_idx], per["single_best"][k][test_idx],
                                     **boot) for k in METRICS}
        result["composite"] = comp
    test = np.zeros(len(items), dtype=bool)
    test[test_idx] = True
    groups = {"in_bank": in_bank, "not_in_bank": ~in_bank}
    for kind in sorted({it.kind for it in items}):
        groups[f"kind={kind or 'basic'}"] = np.array([it.kind == kind for it in items])
    def summary(sel):
        out = {}
        for c, v in per.items():
            out[c] = {"n": int((~np.isnan(v["mc"][sel])).sum())}
            for k in METRICS:
                a = v[k][sel]
                a = a[~np.isnan(a)]
                out[c][k] = float(a.mean()) if len(a) else None
        return out

    result["by_group"] = {g: summary(test & m) for g, m in groups.items()}
    rels = sorted({it.relation for it in items})
    result["by_relation"] = {r: summary(test & np.array([it.relation == r for it in items]))
                             for r in rels}
    known = [(it.relation, bank.names[int(b)]) for it, b in zip(items, logp.argmax(1))
             if it.relation in bank.names]
    result["single_best_is_true_relation"] = (sum(a == b for a, b in known) / len(known)
                                              if known else None)
    return result
