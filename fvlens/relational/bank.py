"""A bank of relation vectors, fitted with their quality measured and their layer chosen on
validation.

``fit_relations`` fine-tunes one FV per relation under each candidate setting (an injection
layer, or ``"screen"``: the ICL task vector as the start, at the layer where it does best on
validation), keeps per relation the candidate with the best validation top-1 (ties: lower
validation loss; with ``common_layer`` one candidate for all relations, as a similarity
analysis needs), and measures its ``VectorQuality``: validation top-1, the ICL reference on the
same queries, top-1 on its own training pairs and on held-out test pairs. Every candidate's
numbers are kept, so the effect of the layer and the start can be read per relation.
A ``RelationBank`` holds the vectors with their quality; ``passing`` keeps those that pass.
Saved with a model, a bank's files are ``fvlens.vectors`` files (the model's fingerprint
inside, checked on load); files of the older relational format are still read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm
from fvlens.modeltype import Model

from fvlens.relational.finetune import (FinetuneConfig, FinetuneResult, finetune_many,
                                        load_vector, save_vector, split_pairs)
from fvlens.relational.objective import score_vector
from fvlens.relational.quality import (DEFAULT_PASS_RATIO, VectorQuality, icl_reference,
                                       multi_token_share)
from fvlens.steering import FunctionVector
from fvlens.tasks import Task, load_task
from fvlens.vectors import FORMAT
from fvlens.vectors import load_vector as load_model_vector
from fvlens.vectors import save_vector as save_model_vector

__all__ = ["RelationBank", "fit_relations", "build_bank", "parse_candidates", "Fitted"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RelationBank:
    """Named relation vectors, each a ``FunctionVector`` with its injection layer.

    Attributes:
        names: the relation (task) names.
        vectors: one FunctionVector per name, each with ``layer`` set.
        quality: per name its ``VectorQuality`` (or None when unknown, e.g. a vector file
            written without one).
    """

    names: tuple[str, ...]
    vectors: tuple[FunctionVector, ...]
    quality: tuple[VectorQuality | None, ...] = ()

    def __post_init__(self) -> None:
        if len(self.names) != len(self.vectors) or not self.names:
            raise ValueError(f"a bank needs one vector per name and at least one: "
                             f"{len(self.names)} names, {len(self.vectors)} vectors")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate relation names in the bank: {self.names}")
        for n, v in zip(self.names, self.vectors):
            if not isinstance(v, FunctionVector) or v.layer is None:
                raise ValueError(f"bank vector {n!r} must be a FunctionVector with a layer "
                                 "(fine-tune with inject='fv')")
        if not self.quality:
            object.__setattr__(self, "quality", (None,) * len(self.names))
        if len(self.quality) != len(self.names):
            raise ValueError(f"{len(self.quality)} quality records for {len(self.names)} vectors")

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"relation {name!r} is not in the bank; it has {list(self.names)}")
        return self.names.index(name)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(int(v.layer) for v in self.vectors)

    def subset(self, names: Sequence[str]) -> RelationBank:
        """The bank restricted to ``names`` (in the bank's order)."""
        keep = [i for i, n in enumerate(self.names) if n in set(names)]
        missing = set(names) - set(self.names)
        if missing or not keep:
            raise ValueError(f"cannot take {sorted(names)} from a bank of {list(self.names)}")
        return RelationBank(names=tuple(self.names[i] for i in keep),
                            vectors=tuple(self.vectors[i] for i in keep),
                            quality=tuple(self.quality[i] for i in keep))

    def passing(self, ratio: float | None = None, metric: str | None = None) -> list[str]:
        """Names of the vectors that pass (vectors without a quality record count as
        passing: nothing is known against them); ``ratio`` / ``metric`` override the
        recorded ones."""
        over = {k: v for k, v in (("ratio", ratio), ("metric", metric)) if v is not None}
        return [n for n, q in zip(self.names, self.quality)
                if q is None or dataclasses.replace(q, **over).passes]

    def save(self, folder: str | Path, model: Model | None = None) -> Path:
        """Write ``folder/{name}.safetensors`` per relation (quality in the metadata): with
        ``model``, ``fvlens.vectors`` files carrying its fingerprint; without, the older
        relational format (no model identity)."""
        folder = Path(folder)
        for n, v, q in zip(self.names, self.vectors, self.quality):
            meta = {"relation": n} | ({"quality": q.to_json()} if q is not None else {})
            if model is not None:
                save_model_vector(v, folder / f"{n}.safetensors", model, meta=meta)
            else:
                save_vector(folder / f"{n}.safetensors", v, meta=meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path, names: Sequence[str] | None = None,
             model: Model | None = None) -> RelationBank:
        """Read every ``*.safetensors`` FV in ``folder`` (or only ``names``), sorted by name;
        with ``model``, a file made on another model is refused (``fvlens.vectors``)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"bank folder {folder} does not exist; build one with "
                                    "`fvlens analogies --build-bank default` or "
                                    "fvlens.relational.bank.build_bank")
        files = sorted(folder.glob("*.safetensors"))
        if names is not None:
            have = {f.stem for f in files}
            missing = set(names) - have
            if missing:
                raise ValueError(f"bank {folder} lacks {sorted(missing)}; it has {sorted(have)}")
            files = [f for f in files if f.stem in set(names)]
        if not files:
            raise ValueError(f"bank folder {folder} holds no .safetensors vectors")
        loaded = [(f.stem, *_read(f, model)) for f in files]
        dfvs = sorted(n for n, v, _ in loaded if not isinstance(v, FunctionVector))
        if dfvs:
            raise ValueError(f"bank {folder} holds DFVs {dfvs}; a bank holds FVs only")
        return cls(names=tuple(n for n, _, _ in loaded), vectors=tuple(v for _, v, _ in loaded),
                   quality=tuple(VectorQuality.from_json(m["quality"]) if "quality" in m
                                 else None for _, _, m in loaded))


def _read(path: Path, model: Model | None) -> tuple:
    """One bank file of either format: ``(vector, meta)``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = (f.metadata() or {}).get("fvlens")
    if header is not None and json.loads(header).get("format") == FORMAT:
        return load_model_vector(path, model), json.loads(header).get("meta", {})
    return load_vector(path)


def parse_candidates(spec: str | Sequence) -> list[dict]:
    """Candidate settings from ``"10,18,screen"``-style text or a list of ints / "screen":
    an int is an injection layer (with the config's init); "screen" starts from the ICL task
    vector at the layer where that vector does best on validation."""
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else spec
    out = []
    for s in items:
        if str(s) == "screen":
            out.append({"init": "icl_mean", "layer": None})
        else:
            try:
                out.append({"layer": int(s)})
            except ValueError:
                raise ValueError(f"a layer candidate is an int or 'screen', got {s!r}") from None
    if not out:
        raise ValueError("give at least one layer candidate")
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fitted:
    """One relation's chosen vector, its quality and every candidate's numbers."""

    result: FinetuneResult
    quality: VectorQuality
    candidates: dict


def _key(c: dict) -> str:
    return "screen" if c.get("layer") is None else f"layer {c['layer']}"


def fit_relations(model: Model, tasks: Sequence[str | Task], cfg: FinetuneConfig,
                  *, candidates: Sequence[dict] | str = "default", common_layer: bool = False,
                  pass_ratio: float = DEFAULT_PASS_RATIO, metric: str = "top1",
                  icl_shots: int = 10, progress: bool = True) -> list[Fitted]:
    """Fit one FV per relation, choosing among ``candidates`` on validation, and measure it.

    Args:
        tasks: the relations.
        cfg: the fine-tuning settings (``inject`` must be "fv"); each candidate overrides
            its layer (and init).
        candidates: from ``parse_candidates``; "default" = ``cfg.layer`` (or ``n_layers //
            3``) and "screen".
        common_layer: one candidate for every relation (the best mean validation top-1).
        pass_ratio: the quality threshold's ratio.
        metric: what the threshold compares ("top1" or "top5", ``VectorQuality``).
        icl_shots: demonstrations of the ICL reference.
    """
    if cfg.inject != "fv":
        raise ValueError("a bank holds FVs: use FinetuneConfig(inject='fv')")
    tasks = [t if isinstance(t, Task) else load_task(t) for t in tasks]
    if candidates == "default":
        layer = cfg.layer if cfg.layer is not None else model.cfg.n_layers // 3
        candidates = [{"layer": layer}, {"init": "icl_mean", "layer": None}]
    elif isinstance(candidates, str):
        candidates = parse_candidates(candidates)
    runs = {}
    for c in tqdm(candidates, desc="relation vectors", disable=not progress):
        runs[_key(c)] = finetune_many(model, tasks, dataclasses.replace(cfg, **c),
                                      progress=progress)  # the steps' bar inside
    keys = list(runs)

    def rank(r: FinetuneResult) -> tuple[float, float]:
        return (r.val_top1, -r.val_loss)

    if common_layer:
        best_key = max(keys, key=lambda k: (sum(r.val_top1 for r in runs[k]),
                                           -sum(r.val_loss for r in runs[k])))
        chosen = [best_key] * len(tasks)
    else:
        chosen = [max(keys, key=lambda k: rank(runs[k][i])) for i in range(len(tasks))]
    out = []
    bar = tqdm(list(zip(tasks, chosen)), desc="quality (ICL reference, test)",
               disable=not progress, leave=False)
    for i, (task, key) in enumerate(bar):
        res = runs[key][i]
        train_q, val_q, test_q = split_pairs(task, cfg)
        icl = icl_reference(model, val_q, train_q, shots=icl_shots, seed=cfg.seed)
        test = (float(score_vector(model, res.vector, test_q, target=cfg.target)
                      .correct(cfg.target).float().mean()) if test_q else None)
        val_top5 = float((score_vector(model, res.vector, val_q).first_rank < 5).float().mean())
        table = {k: {"val_top1": runs[k][i].val_top1, "val_loss": runs[k][i].val_loss,
                     "train_top1": runs[k][i].train_top1, "layer": runs[k][i].vector.layer,
                     "best_step": runs[k][i].best_step} for k in keys}
        details = {"icl": icl, "multi_token_val": multi_token_share(model, val_q),
                   "chosen": key, "best_step": res.best_step, "lr": res.lr}
        if res.layer_screen is not None:
            details["screen_top1"] = {str(k): v["top1"] for k, v in res.layer_screen.items()}
        q = VectorQuality(name=task.name, layer=res.vector.layer, target=cfg.target,
                          val_top1=res.val_top1, icl_top1=icl[cfg.target], n_val=len(val_q),
                          ratio=pass_ratio, metric=metric, val_top5=val_top5,
                          icl_top5=icl["first_top5"], train_top1=res.train_top1,
                          test_top1=test, details=details)
        out.append(Fitted(result=res, quality=q, candidates=table))
    return out


def build_bank(model: Model, tasks: Sequence[str | Task], folder: str | Path | None,
               cfg: FinetuneConfig | None = None, *, candidates: Sequence[dict] | str = "default",
               pass_ratio: float = DEFAULT_PASS_RATIO, metric: str = "top1",
               progress: bool = True) -> tuple[RelationBank, list[Fitted]]:
    """Fit a bank (``fit_relations``) and save it to ``folder/{task}.safetensors``.

    Args:
        cfg: fine-tuning settings; default ``init="zeros"`` at layer ``n_layers // 3`` (no head
            scoring, so a bank of 20 relations fits a CPU budget).
        folder: where to save (None: do not save).
    """
    cfg = cfg or FinetuneConfig(init="zeros", layer=model.cfg.n_layers // 3)
    fitted = fit_relations(model, tasks, cfg, candidates=candidates, pass_ratio=pass_ratio,
                           metric=metric, progress=progress)
    bank = RelationBank(names=tuple(f.quality.name for f in fitted),
                        vectors=tuple(f.result.vector for f in fitted),
                        quality=tuple(f.quality for f in fitted))
    if folder is not None:
        bank.save(folder, model)
    return bank, fitted
