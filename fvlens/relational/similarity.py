"""Alignment of relation representations with human relation-similarity judgments.

Ratings follow Chen, Peterson & Griffiths (2017): each row rates how similar the relations of
two word pairs are (``pair1_word1:pair1_word2`` vs ``pair2_word1:pair2_word2``), with the
relation subtypes of both pairs and a comparison type (within-subtype, between-subtype,
between-type). Two analyses (choices documented in ``docs/relational.md``):

- relation level (RSA): one vector per relation subtype; the cosine of two relations' vectors
  against the mean rating of rows comparing those relations (off-diagonal relation pairs);
  the permutation test shuffles relation labels (Mantel), the bootstrap resamples relation
  pairs.
- pair level: one vector per word pair; the cosine of the two pairs of a row against its
  rating, overall and per comparison type; the permutation test shuffles which vector belongs
  to which pair (each pair occurs in many rows, so shuffling rows would be anti-conservative),
  the bootstrap resamples rows.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from fvlens.modeltype import Model

from fvlens.batch import pad_left
from fvlens.forward import run_to
from fvlens.prompts import DEFAULT_TEMPLATE, icl_prompts, pad_token_id, tokenize
from fvlens.relational.ratings import Rating, correlate
from fvlens.tasks import Pair, Task

__all__ = ["relation_level", "pair_level", "pair_representations", "unembed_difference",
           "icl_mean_vectors", "random_vectors", "random_draws", "scatter", "relation_task"]

def _cosine_matrix(vectors: Tensor) -> np.ndarray:
    v = torch.nn.functional.normalize(vectors.float(), dim=-1)
    return (v @ v.T).numpy()


# --- relation level ------------------------------------------------------------------------


def relation_level(rows: Sequence[Rating], names: Sequence[str],
                   vectors: Float[Tensor, "n_relations d"], *, n_perm: int = 1000,
                   n_boot: int = 1000, seed: int = 0) -> dict:
    """RSA: cosine of relation vectors vs the mean rating of each rated relation pair.

    Args:
        rows: the ratings.
        names: relation subtypes, one per row of ``vectors``.
        vectors: one vector per relation.

    Returns:
        ``correlate``'s dict plus ``"items": [{"relations", "cosine", "rating"}]``.
    """
    if len(names) != vectors.shape[0]:
        raise ValueError(f"{len(names)} names for {vectors.shape[0]} vectors")
    index = {n: i for i, n in enumerate(names)}
    sums: dict[tuple[int, int], list[float]] = {}
    for r in rows:
        if r.relation1 in index and r.relation2 in index and r.relation1 != r.relation2:
            a, b = sorted((index[r.relation1], index[r.relation2]))
            sums.setdefault((a, b), []).append(r.mean_rating)
    if len(sums) < 3:
        raise ValueError(f"only {len(sums)} rated pairs of distinct relations among {list(names)};"
                         " include more relations")
    keys = sorted(sums)
    sim = _cosine_matrix(vectors)
    ia, ib = np.array([k[0] for k in keys]), np.array([k[1] for k in keys])
    model_sim = sim[ia, ib]
    human = np.array([np.mean(sums[k]) for k in keys])

    def mantel(rng: np.random.Generator) -> np.ndarray:
        p = rng.permutation(len(names))
        return sim[p][:, p][ia, ib]

    out = correlate(model_sim, human, n_perm=n_perm, n_boot=n_boot, seed=seed, permute=mantel)
    out["items"] = [{"relations": [names[a], names[b]], "cosine": float(c), "rating": float(h)}
                    for (a, b), c, h in zip(keys, model_sim, human)]
    return out


@torch.no_grad()
def icl_mean_vectors(model: Model, relations: dict[str, Sequence[Pair]], *,
                     layer: int, shots: int = 5, n_prompts: int = 10, seed: int = 0,
                     center: bool = True) -> Float[Tensor, "n_relations d_model"]:
    """Unfine-tuned relation vectors: the mean last-token residual at ``layer`` over
    ``shots``-shot ICL prompts of each relation (centred across relations by default).
    Relations with fewer than ``shots + 1`` pairs use as many shots as they can."""
    out = []
    for name, pairs in relations.items():
        pairs = list(pairs)
        k = min(shots, len(pairs) - 1)
        if k < 1:
            raise ValueError(f"relation {name!r} has {len(pairs)} pair(s); need ≥ 2")
        qs = random.Random(seed).sample(pairs, min(n_prompts, len(pairs)))
        batch = icl_prompts(model, qs, pairs, shots=k, seed=seed)
        out.append(_last_resid(model, batch.tokens, batch.attention_mask, layer).mean(0))
    v = torch.stack(out)
    return v - v.mean(0) if center else v


@torch.no_grad()
def _last_resid(model, tokens, mask, layer: int) -> Tensor:
    """``blocks.{layer}.hook_resid_post`` at the last position."""
    return run_to(model, tokens, mask, layer=layer + 1)[:, -1].float().cpu()


def unembed_difference(model: Model, pairs: Sequence[Pair]
                       ) -> Float[Tensor, "n_pairs d_model"]:
    """Baseline pair vector: ``W_U[:, tok(" " + B)] − W_U[:, tok(" " + A)]`` (first tokens)."""
    w_u = model.W_U.detach().float().cpu()
    tok = model.tokenizer

    def first(word: str) -> int:
        return tok(DEFAULT_TEMPLATE.answer_prefix + word, add_special_tokens=False)["input_ids"][0]

    return torch.stack([w_u[:, first(p.output)] - w_u[:, first(p.input)] for p in pairs])


def random_vectors(n: int, d: int, *, seed: int = 0) -> Float[Tensor, "n d"]:
    """Seeded Gaussian vectors (the chance baseline)."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def random_draws(analysis: Callable[[Tensor], dict], n: int, d: int, *, draws: int = 20,
                 seed: int = 0) -> dict:
    """The chance level of an analysis: its Spearman r over ``draws`` sets of random vectors.

    One random draw can land far from 0 by chance (the pair level's rows share pairs, so r
    varies more than an independent-rows null suggests); the mean and spread over draws show
    where chance lies.

    Args:
        analysis: maps ``[n, d]`` vectors to a ``correlate``-style dict (``{"spearman": {"r"}}``
            or ``{"all": {...}, <type>: {...}}``).
    """
    per: dict[str, list[float]] = {}
    for k in range(draws):
        res = analysis(random_vectors(n, d, seed=seed + 1000 + k))
        flat = {"all": res} if "spearman" in res else {t: v for t, v in res.items()
                                                        if isinstance(v, dict)}
        for t, v in flat.items():
            per.setdefault(t, []).append(v["spearman"]["r"])
    return {t: {"draws": draws, "mean_r": float(np.mean(rs)), "sd_r": float(np.std(rs)),
                "max_abs_r": float(np.max(np.abs(rs)))} for t, rs in per.items()}


# --- pair level ----------------------------------------------------------------------------


@torch.no_grad()
def pair_representations(model: Model, pairs: Sequence[Pair], *, layer: int,
                         center: bool = True, batch_size: int = 32
                         ) -> Float[Tensor, "n_pairs d_model"]:
    """Each pair ``A:B`` as the last-token residual at ``layer`` of ``Q: A\\nA: B\\n\\nQ:``.

    The pair is the only demonstration and the prompt stops where the next query would
    begin, so the last token's residual summarises the demonstrated mapping (the position
    whose head outputs make a function vector). With ``center`` the mean over ``pairs`` is
    subtracted (the residual stream has a large shared component that dominates cosines).
    """
    q = DEFAULT_TEMPLATE
    texts = [q.query.format(x=p.input) + q.answer_prefix + p.output + q.demo_suffix + "Q:"
             for p in pairs]
    out = []
    for s in range(0, len(texts), batch_size):
        tokens, mask = pad_left([tokenize(model, t)[0] for t in texts[s:s + batch_size]],
                                pad_token_id(model))
        out.append(_last_resid(model, tokens, mask, layer))
    v = torch.cat(out)
    return v - v.mean(0) if center else v


def pair_level(rows: Sequence[Rating], pairs: Sequence[Pair],
               vectors: Float[Tensor, "n_pairs d"], *, n_perm: int = 1000, n_boot: int = 1000,
               seed: int = 0) -> dict:
    """Cosine of each row's two pair vectors vs its rating, overall and per comparison type.

    Returns:
        ``{"all": correlate-dict, "<comparison_type>": correlate-dict, ...,
        "cosine": [per-row cosine]}``.
    """
    index = {(p.input, p.output): i for i, p in enumerate(pairs)}
    missing = {r.pair1 for r in rows if r.pair1 not in index} | \
        {r.pair2 for r in rows if r.pair2 not in index}
    if missing:
        raise ValueError(f"{len(missing)} rated pairs have no vector, e.g. {sorted(missing)[:3]}")
    sim = _cosine_matrix(vectors)
    a = np.array([index[r.pair1] for r in rows])
    b = np.array([index[r.pair2] for r in rows])
    cos = sim[a, b]
    human = np.array([r.mean_rating for r in rows])
    types = np.array([r.comparison_type for r in rows])

    def relabel(sel: np.ndarray):
        def permute(rng: np.random.Generator) -> np.ndarray:
            p = rng.permutation(len(pairs))
            return sim[p[a[sel]], p[b[sel]]]
        return permute

    every = np.ones(len(rows), dtype=bool)
    out = {"all": correlate(cos, human, n_perm=n_perm, n_boot=n_boot, seed=seed,
                            permute=relabel(every))}
    for t in sorted(set(types)):
        sel = types == t
        out[t] = correlate(cos[sel], human[sel], n_perm=n_perm, n_boot=n_boot, seed=seed,
                           permute=relabel(sel))
    out["cosine"] = [float(c) for c in cos]
    return out


def scatter(rows: Sequence[Rating], cosines: Sequence[float], *, title: str = ""):
    """Plotly scatter of model cosine vs human rating, coloured by comparison type."""
    import plotly.graph_objects as go

    fig = go.Figure()
    types = sorted({r.comparison_type for r in rows})
    for t in types:
        idx = [i for i, r in enumerate(rows) if r.comparison_type == t]
        fig.add_trace(go.Scattergl(
            x=[cosines[i] for i in idx], y=[rows[i].mean_rating for i in idx], mode="markers",
            name=t, marker=dict(size=5, opacity=0.6),
            text=[f"{rows[i].pair1[0]}:{rows[i].pair1[1]} vs {rows[i].pair2[0]}:{rows[i].pair2[1]}"
                  for i in idx]))
    fig.update_layout(title=title, xaxis_title="model cosine", yaxis_title="mean human rating")
    return fig


def relation_task(name: str, pairs: Sequence[Pair]) -> Task:
    """A relation subtype's pairs as a Task (for ``finetune``)."""
    return Task(name=name, description=f"relation subtype {name} of the ratings file",
                pairs=tuple(pairs))
