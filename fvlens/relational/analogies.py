"""Analogies A:B::C:? solved with composite function vectors, and their baselines.

Items are ``AnalogyItem``s: a stem ``(A, B)``, choices ``(C_j, D_j)`` and the answer index
(SAT style; items with one query C have the same C in every choice). Two formats:

- multiple choice: each choice scores Σ_t log p(D_j token t | steered ``Q: C_j\\nA:``); the
  highest score wins (multi-token candidates summed);
- generative: the first token of ``" " + D`` is the top-1 at the steered ``Q: C\\nA:``.

Conditions: ``none`` (no vector), ``icl`` (``Q: A\\nA: B\\n\\n`` as the only demonstration),
``single_best`` (the one bank vector giving B the highest probability on ``Q: A\\nA:``),
``oracle`` (the bank vector of the item's true relation; only items whose relation is in the
bank) and ``composite`` (``fit_weights``). The steering edit is made at the prompt's last
token only; the candidate tokens that follow see it through attention, as in generation.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fvlens.batch import pad_left
from fvlens.forward import final_logits, run_to
from fvlens.modeltype import Model
from fvlens.prompts import DEFAULT_TEMPLATE, pad_token_id, tokenize
from fvlens.relational.composite import (CompositeConfig, RelationBank, composite_hooks,
                                         fit_weights, single_vector_logprobs)
from fvlens.tasks import Pair, Task, load_task

__all__ = ["AnalogyItem", "load_items", "save_items", "generate_items", "builtin_items",
           "score_items", "evaluate_analogies", "build_bank", "CONDITIONS", "ITEM_RELATIONS",
           "EXTRA_RELATIONS"]

CONDITIONS = ("none", "icl", "single_best", "oracle", "composite")

# Built-in tasks that are word-to-word relations (the list-selection tasks are not).
ITEM_RELATIONS = ("antonym", "capitalize", "country-capital", "country-currency",
                  "english-french", "english-german", "english-spanish", "landmark-country",
                  "next_item", "prev_item", "present-past", "product-company",
                  "singular-plural", "synonym")

# Hand-written relations that no built-in task covers (so no bank vector is their own).
EXTRA_RELATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "animal-young": (("dog", "puppy"), ("cat", "kitten"), ("cow", "calf"), ("sheep", "lamb"),
                     ("horse", "foal"), ("goat", "kid"), ("bear", "cub"), ("duck", "duckling"),
                     ("frog", "tadpole"), ("swan", "cygnet")),
    "male-female": (("king", "queen"), ("man", "woman"), ("boy", "girl"), ("father", "mother"),
                    ("brother", "sister"), ("uncle", "aunt"), ("prince", "princess"),
                    ("husband", "wife"), ("son", "daughter"), ("actor", "actress")),
    "comparative": (("big", "bigger"), ("small", "smaller"), ("fast", "faster"),
                    ("tall", "taller"), ("old", "older"), ("cold", "colder"),
                    ("strong", "stronger"), ("long", "longer"), ("young", "younger"),
                    ("hard", "harder")),
    "part-whole": (("wheel", "car"), ("page", "book"), ("leaf", "tree"), ("petal", "flower"),
                   ("finger", "hand"), ("key", "keyboard"), ("room", "house"),
                   ("branch", "tree"), ("wing", "bird"), ("toe", "foot")),
    "object-color": (("banana", "yellow"), ("grass", "green"), ("sky", "blue"),
                     ("snow", "white"), ("coal", "black"), ("blood", "red"),
                     ("orange", "orange"), ("lemon", "yellow"), ("cherry", "red"),
                     ("leaf", "green")),
    "worker-tool": (("painter", "brush"), ("writer", "pen"), ("carpenter", "hammer"),
                    ("chef", "knife"), ("farmer", "plow"), ("surgeon", "scalpel"),
                    ("fisherman", "net"), ("gardener", "rake"), ("tailor", "needle"),
                    ("photographer", "camera")),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnalogyItem:
    """``A:B :: C_j:D_j``; ``choices[answer]`` is the right completion.

    Attributes:
        stem: ``(A, B)``.
        choices: ``(C, D)`` per choice.
        answer: index of the right choice.
        relation: the relation's name when known ("" otherwise).
    """

    stem: tuple[str, str]
    choices: tuple[tuple[str, str], ...]
    answer: int
    relation: str = ""

    def __post_init__(self) -> None:
        if len(self.stem) != 2 or not all(isinstance(s, str) and s for s in self.stem):
            raise ValueError(f"stem must be two non-empty words, got {self.stem!r}")
        if not self.choices or any(len(c) != 2 or not all(c) for c in self.choices):
            raise ValueError(f"choices must be non-empty (C, D) word pairs, got {self.choices!r}")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"answer {self.answer} is not a choice index "
                             f"(0..{len(self.choices) - 1})")

    @property
    def query(self) -> tuple[str, str]:
        """The right ``(C, D)``, the generative format's question and answer."""
        return self.choices[self.answer]

    def to_json(self) -> dict:
        return {"stem": list(self.stem), "choice": [list(c) for c in self.choices],
                "answer": self.answer, "relation": self.relation}


def _item_from_json(rec, where: str) -> AnalogyItem:
    help_ = ('an item is {"stem": [A, B], "choice": [[C, D], ...], "answer": i} or '
             '{"stem": [A, B], "query": C, "choice": [D, ...], "answer": i}')
    if not isinstance(rec, dict) or not {"stem", "choice", "answer"} <= set(rec):
        raise ValueError(f"{where}: {help_}; got {rec!r}")
    choice = rec["choice"]
    if "query" in rec:
        choices = tuple((rec["query"], d) for d in choice)
    else:
        choices = tuple(tuple(c) for c in choice)
    return AnalogyItem(stem=tuple(rec["stem"]), choices=choices, answer=int(rec["answer"]),
                       relation=str(rec.get("relation", "")))


def load_items(path: str | Path) -> list[AnalogyItem]:
    """Read analogy items from a ``.jsonl`` (SAT style) or ``.csv`` (``A,B,C,D[,D_foil...]``).

    A CSV row's choices are ``(C, D)`` then ``(C, D_foil)`` for each foil; the answer is 0. An
    optional header row starting ``A,B,C,D`` is skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"analogy file {path} does not exist; the project's items are "
                                "tasks/analogies.jsonl")
    items = []
    if path.suffix == ".jsonl":
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                items.append(_item_from_json(json.loads(line), f"{path}:{i + 1}"))
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                row = [c.strip() for c in row if c.strip()]
                if not row or (i == 0 and [c.upper() for c in row[:4]] == ["A", "B", "C", "D"]):
                    continue
                if len(row) < 4:
                    raise ValueError(f"{path}:{i + 1}: a row is A,B,C,D[,D_foil...], got {row}")
                a, b, c, d, *foils = row
                items.append(AnalogyItem(stem=(a, b), choices=((c, d), *((c, x) for x in foils)),
                                         answer=0))
    else:
        raise ValueError(f"{path}: unknown analogy format {path.suffix!r}; use .jsonl or .csv")
    if not items:
        raise ValueError(f"{path} holds no analogy items")
    return items


def save_items(path: str | Path, items: Sequence[AnalogyItem]) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(it.to_json()) + "\n" for it in items), encoding="utf-8")
    return path


def generate_items(relations: dict[str, Sequence[Pair]], *, per_relation: int = 8,
                   n_choices: int = 4, seed: int = 0) -> list[AnalogyItem]:
    """Analogy items from word-pair relations: stem and query are two pairs of one relation.

    Foils for ``C``: ``C`` itself (copying), the output of another pair of the same relation
    (right kind of word, wrong mapping), and outputs of other relations; every foil differs
    from every output the relation gives C.
    """
    rng = random.Random(seed)
    names = sorted(relations)
    out = []
    for name in names:
        pairs = list(dict.fromkeys(relations[name]))
        good = {}
        for p in pairs:
            good.setdefault(p.input, set()).add(p.output)
        others = [p.output for n in names if n != name for p in relations[n]]
        for _ in range(per_relation):
            stem, query = rng.sample(pairs, 2)
            if stem.input == query.input:
                continue
            foils = [query.input, rng.choice([p.output for p in pairs])]
            while len(foils) < n_choices - 1 + 8:
                foils.append(rng.choice(others))
            seen, picked = set(good[query.input]), []
            for f in foils:
                if f not in seen:
                    seen.add(f)
                    picked.append(f)
                if len(picked) == n_choices - 1:
                    break
            ds = [query.output] + picked
            order = list(range(len(ds)))
            rng.shuffle(order)
            out.append(AnalogyItem(stem=(stem.input, stem.output),
                                   choices=tuple((query.input, ds[j]) for j in order),
                                   answer=order.index(0), relation=name))
    return out


def builtin_items(*, per_relation: int = 8, seed: int = 0) -> list[AnalogyItem]:
    """The project's items (``tasks/analogies.jsonl``): built-in relations plus
    ``EXTRA_RELATIONS``, foils drawn across all of them."""
    rel = {n: load_task(n).pairs for n in ITEM_RELATIONS}
    rel |= {n: tuple(Pair(input=a, output=b) for a, b in ps) for n, ps in EXTRA_RELATIONS.items()}
    return generate_items(rel, per_relation=per_relation, seed=seed)


# --- scoring -------------------------------------------------------------------------------


def _score_rows(model: Model, prompts: Sequence[str], candidates: Sequence[str],
                weights: Tensor | None, bank: RelationBank | None, batch_size: int
                ) -> tuple[Tensor, Tensor]:
    """Per row: Σ log p(candidate tokens | prompt) and whether the candidate's first token is
    the top-1 after the prompt, with row b steered by ``weights[b]`` over ``bank``."""
    scores, top1 = [], []
    tok = model.tokenizer
    for s in range(0, len(prompts), batch_size):
        rows = []
        for p, c in zip(prompts[s:s + batch_size], candidates[s:s + batch_size]):
            pid = tokenize(model, p)[0]
            cid = tok(DEFAULT_TEMPLATE.answer_prefix + c, add_special_tokens=False)["input_ids"]
            rows.append((pid, cid))
        tokens, mask = pad_left([p + c for p, c in rows], pad_token_id(model))
        width = tokens.shape[1]
        # the position predicting each candidate's first token: the prompt's last token
        pos = torch.tensor([width - len(c) - 1 for _, c in rows], dtype=torch.long)
        hooks = []
        if weights is not None:
            hooks = composite_hooks(bank, weights[s:s + batch_size], positions=pos)
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            resid = run_to(model, tokens, mask)
            for i, (_, c) in enumerate(rows):
                at = int(pos[i])
                logp = final_logits(model, resid[i, at:at + len(c)]).float().log_softmax(-1).cpu()
                scores.append(float(logp.gather(1, torch.tensor(c)[:, None]).sum()))
                top1.append(bool(logp[0].argmax() == c[0]))
    return torch.tensor(scores), torch.tensor(top1)


def score_items(model: Model, items: Sequence[AnalogyItem], *,
                weights: Tensor | None = None, bank: RelationBank | None = None,
                icl: bool = False, batch_size: int = 16) -> dict:
    """Multiple-choice and generative correctness of each item under one condition.

    Args:
        weights: ``[n_items, n_bank]`` composite weights per item (None: no vector).
        bank: the bank the weights refer to.
        icl: prepend the stem as the only demonstration.

    Returns:
        ``{"mc": bool tensor [n_items], "generative": bool tensor [n_items]}``.
    """
    q = DEFAULT_TEMPLATE.query
    prompts, cands, owner, w_rows = [], [], [], []
    for i, it in enumerate(items):
        demo = (q.format(x=it.stem[0]) + DEFAULT_TEMPLATE.answer_prefix + it.stem[1]
                + DEFAULT_TEMPLATE.demo_suffix) if icl else ""
        for c, d in it.choices:
            prompts.append(demo + q.format(x=c))
            cands.append(d)
            owner.append(i)
            if weights is not None:
                w_rows.append(weights[i])
    w = torch.stack(w_rows) if weights is not None else None
    scores, top1 = _score_rows(model, prompts, cands, w, bank, batch_size)
    mc, gen = [], []
    start = 0
    for it in items:
        n = len(it.choices)
        s = scores[start:start + n]
        mc.append(int(s.argmax()) == it.answer if n > 1 else bool(top1[start + it.answer]))
        gen.append(bool(top1[start + it.answer]))
        start += n
    return {"mc": torch.tensor(mc), "generative": torch.tensor(gen)}


def evaluate_analogies(model: Model, items: Sequence[AnalogyItem],
                       bank: RelationBank, *, cfg: CompositeConfig = CompositeConfig(),
                       conditions: Sequence[str] = CONDITIONS, progress: bool = True) -> dict:
    """Accuracy of every condition, overall and split by whether the relation is in the bank.

    Returns:
        ``{"accuracy": {cond: {"mc", "generative", "n"}}, "by_group": {"in_bank"|"not_in_bank":
        {cond: {...}}}, "by_relation": {...}, "weights": {...}}``.
    """
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions {sorted(unknown)}; choose from {CONDITIONS}")
    from fvlens.prompts import zero_shot_prompts

    stems = [Pair(input=it.stem[0], output=it.stem[1]) for it in items]
    n = len(items)
    eye = torch.eye(len(bank))
    per: dict[str, dict] = {}
    in_bank = torch.tensor([it.relation in bank.names for it in items])
    extra: dict = {}
    bar = tqdm(conditions, desc="analogies", disable=not progress)
    for cond in bar:
        bar.set_postfix_str(cond)
        mask = torch.ones(n, dtype=torch.bool)
        if cond == "none":
            res = score_items(model, items)
        elif cond == "icl":
            res = score_items(model, items, icl=True)
        elif cond == "single_best":
            lp = torch.cat([single_vector_logprobs(model, bank,
                                                   zero_shot_prompts(model, stems[s:s + 32]))
                            for s in range(0, n, 32)])
            best = lp.argmax(1)
            extra["single_best"] = [bank.names[int(b)] for b in best]
            res = score_items(model, items, weights=eye[best], bank=bank)
        elif cond == "oracle":
            mask = in_bank
            idx = torch.tensor([bank.index(it.relation) if m else 0
                                for it, m in zip(items, in_bank.tolist())])
            res = score_items(model, [it for it, m in zip(items, mask) if m],
                              weights=eye[idx][mask], bank=bank) if mask.any() else None
        else:
            w = fit_weights(model, bank, stems, cfg)
            extra["composite"] = {"top_relation": [bank.names[int(i)] for i in w.argmax(1)],
                                  "scale": w.sum(1).tolist()}
            res = score_items(model, items, weights=w, bank=bank)
        full = {k: torch.full((n,), float("nan")) for k in ("mc", "generative")}
        if res is not None:
            for k in full:
                full[k][mask] = res[k].float()
        per[cond] = full

    def summary(sel: Tensor) -> dict:
        out = {}
        for cond, r in per.items():
            vals = {k: v[sel] for k, v in r.items()}
            ok = ~vals["mc"].isnan()
            out[cond] = {"n": int(ok.sum()),
                         "mc": float(vals["mc"][ok].mean()) if ok.any() else None,
                         "generative": float(vals["generative"][ok].mean()) if ok.any() else None}
        return out

    rels = sorted({it.relation for it in items})
    result = {"n_items": n, "bank": list(bank.names),
              "accuracy": summary(torch.ones(n, dtype=torch.bool)),
              "by_group": {"in_bank": summary(in_bank), "not_in_bank": summary(~in_bank)},
              "by_relation": {r: summary(torch.tensor([it.relation == r for it in items]))
                              for r in rels},
              "choices": extra}
    if "single_best" in extra:
        known = [(it.relation, b) for it, b in zip(items, extra["single_best"])
                 if it.relation in bank.names]
        result["single_best_is_true_relation"] = (sum(a == b for a, b in known) / len(known)
                                                   if known else None)
    return result


# --- the bank --------------------------------------------------------------------------------


def build_bank(model: Model, tasks: Sequence[str | Task], folder: str | Path,
               cfg=None, *, progress: bool = True) -> RelationBank:
    """Fine-tune one FV per task and save the bank to ``folder/{task}.safetensors``.

    Args:
        tasks: the relations.
        cfg: ``FinetuneConfig`` (inject must be "fv"); default ``init="zeros"`` at layer
            ``model.cfg.n_layers // 3`` (no head scoring needed, so a bank of 20 relations fits
            a CPU budget; pass ``init="aie"`` for extracted starts at their own layers).
    """
    from fvlens.relational.finetune import FinetuneConfig, finetune

    cfg = cfg or FinetuneConfig(init="zeros", layer=model.cfg.n_layers // 3)
    if cfg.inject != "fv":
        raise ValueError("a bank holds FVs: use FinetuneConfig(inject='fv')")
    names, vecs = [], []
    for t in tqdm(tasks, desc="bank", disable=not progress):
        task = t if isinstance(t, Task) else load_task(t)
        res = finetune(model, task, cfg, progress=False)
        names.append(task.name)
        vecs.append(res.vector)
    bank = RelationBank(names=tuple(names), vectors=tuple(vecs))
    bank.save(folder)
    return bank


if __name__ == "__main__":  # regenerate tasks/analogies.jsonl
    from fvlens.tasks import task_dir

    print(save_items(task_dir() / "analogies.jsonl", builtin_items()))
