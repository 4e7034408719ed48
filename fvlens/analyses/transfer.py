"""Cross-task transfer: task A's vector injected into zero-shot prompts of task B.

For every (A, B) the matrix reports the top-1 accuracy on B's targets and how often the
prediction is *A's kind of answer*: the first token of A applied to B's input. A's answer is
known where A is a string transformation (``ANSWER_RULES``: capitalize, first letter in upper or
lower case, choose first/last of a list) or where B's input is one of A's pair inputs;
elsewhere the row does not count (``n_applicable`` says how many did). An unsteered row
("none") gives the baseline of both rates. Beside it: the cosine similarity of the vectors as
injected (each at its own layer). See ``docs/analyses.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from transformer_lens import HookedTransformer

from fvlens.evaluation import evaluate
from fvlens.prompts import target_ids, zero_shot_prompts
from fvlens.steering import FunctionVector
from fvlens.tasks import Pair, Task

__all__ = ["ANSWER_RULES", "answer_of", "TransferResult", "target_queries",
           "transfer_matrix", "transfer_heatmaps"]

ANSWER_RULES: dict[str, Callable[[str], str]] = {
    "capitalize": lambda x: x[:1].upper() + x[1:],
    "capitalize_first_letter": lambda x: x[:1].upper(),
    "lowercase_first_letter": lambda x: x[:1].lower(),
    "choose_first_of_3": lambda x: x.split(",")[0].strip(),
    "choose_first_of_5": lambda x: x.split(",")[0].strip(),
    "choose_last_of_3": lambda x: x.split(",")[-1].strip(),
    "choose_last_of_5": lambda x: x.split(",")[-1].strip(),
}
"""Tasks whose answer is a string function of any input (the rule is A's definition)."""

BASELINE = "none"


def answer_of(task: Task, x: str) -> str | None:
    """Task ``task``'s answer to input ``x``: its rule, else its pair with that input, else None."""
    if task.name in ANSWER_RULES:
        out = ANSWER_RULES[task.name](x)
        return out or None
    for p in task.pairs:
        if p.input == x:
            return p.output
    return None


def target_queries(task: Task, n: int, *, seed: int = 0, test_fraction: float = 0.3
                 ) -> list[Pair]:
    """A seeded sample of ``n`` pairs of the task's test split."""
    _, test = task.split(test_fraction=test_fraction, seed=seed)
    return list(test.sample(min(n, len(test)), seed=seed).pairs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransferResult:
    """Transfer matrices; rows = source vector A (plus "none"), columns = target task B.

    Attributes:
        sources: row names (the vectors' tasks, then "none").
        targets: column names (the tasks whose prompts are steered).
        top1: accuracy on B's targets.
        a_kind: share of applicable rows whose prediction is the first token of A's answer
            (None where no row is applicable; for "none" the rate of B's own kind).
        a_kind_unsteered: the same rate without any vector (the baseline of ``a_kind``).
        n_applicable: rows where A's answer to B's input is known.
        cosine: cosine similarity between the source vectors (sources minus "none").
        layers: each source vector's injection layer.
        n: queries per target task.
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    top1: list[list[float]]
    a_kind: list[list[float | None]]
    a_kind_unsteered: list[list[float | None]]
    n_applicable: list[list[int]]
    cosine: list[list[float]]
    layers: dict[str, int]
    n: dict[str, int]

    def __post_init__(self) -> None:
        for name in ("top1", "a_kind", "a_kind_unsteered", "n_applicable"):
            m = getattr(self, name)
            if len(m) != len(self.sources) or any(len(r) != len(self.targets) for r in m):
                raise ValueError(f"TransferResult.{name} must be {len(self.sources)} × "
                                 f"{len(self.targets)}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def transfer_matrix(model: HookedTransformer, vectors: Mapping[str, FunctionVector],
                    tasks: Mapping[str, Task], *, n_test: int = 20, seed: int = 0,
                    scale: float = 1.0,
                    queries: Mapping[str, Sequence[Pair]] | None = None) -> TransferResult:
    """Inject each task's vector into every task's zero-shot prompts.

    Args:
        vectors: source task -> its function vector (with its injection layer).
        tasks: target task name -> Task (the sources must be among them for the diagonal).
        n_test: queries per target task (``target_queries``), unless ``queries`` is given.
        scale: multiplier of every vector.
        queries: target task -> the pairs to use.

    Returns:
        TransferResult (rows: sources then "none"; columns: targets).
    """
    for name, fv in vectors.items():
        if fv.layer is None:
            raise ValueError(f"vector of {name!r} has no layer; build it with "
                             "FunctionVector(..., layer=…) or .with_layer(layer)")
    targets = list(tasks)
    sources = list(vectors) + [BASELINE]
    top1 = [[0.0] * len(targets) for _ in sources]
    a_kind: list[list[float | None]] = [[None] * len(targets) for _ in sources]
    a_unsteered: list[list[float | None]] = [[None] * len(targets) for _ in sources]
    n_app = [[0] * len(targets) for _ in sources]
    n: dict[str, int] = {}
    for j, b in enumerate(targets):
        qs = list(queries[b]) if queries is not None else target_queries(tasks[b], n_test,
                                                                        seed=seed)
        batch = zero_shot_prompts(model, qs)
        n[b] = len(qs)
        plain = evaluate(model, batch).predictions
        for i, a in enumerate(sources):
            hooks = [] if a == BASELINE else vectors[a].hooks(scale=scale)
            ev = evaluate(model, batch, fwd_hooks=hooks)
            top1[i][j] = ev.top1
            kind_task = tasks[b] if a == BASELINE else tasks.get(a)
            if kind_task is None:
                continue
            answers = [answer_of(kind_task, q.input) for q in qs]
            rows = [r for r, ans in enumerate(answers) if ans is not None]
            n_app[i][j] = len(rows)
            if rows:
                ids, _ = target_ids(model, [answers[r] for r in rows])
                hits = ev.predictions[rows] == torch.tensor(ids)
                a_kind[i][j] = float(hits.float().mean())
                base = plain[rows] == torch.tensor(ids)
                a_unsteered[i][j] = float(base.float().mean())
    vs = torch.stack([vectors[a].vector.double() for a in vectors]) if vectors else \
        torch.zeros(0, model.cfg.d_model, dtype=torch.float64)
    vs = vs / vs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return TransferResult(sources=tuple(sources), targets=tuple(targets), top1=top1,
                          a_kind=a_kind, a_kind_unsteered=a_unsteered, n_applicable=n_app,
                          cosine=(vs @ vs.T).tolist(),
                          layers={a: int(v.layer) for a, v in vectors.items()},  # type: ignore
                          n=n)


def transfer_heatmaps(result: TransferResult | Mapping[str, Any]) -> go.Figure:
    """Three heatmaps: top-1 on B's targets, A-kind rate, and the vectors' cosine similarity.

    Args:
        result: a TransferResult or its ``to_json()`` dict.
    """
    r = result if isinstance(result, TransferResult) else TransferResult(**result)
    src = [f"{s} →" if s != BASELINE else "none (unsteered)" for s in r.sources]
    vec = [s for s in r.sources if s != BASELINE]

    def text(m):
        return [["–" if v is None else f"{v:.2f}" for v in row] for row in m]

    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.12, subplot_titles=(
        "top-1 on B's targets", "A's kind of answer", "cosine(A, A')"))
    fig.add_trace(go.Heatmap(z=r.top1, x=list(r.targets), y=src, zmin=0, zmax=1,
                             colorscale="Viridis", text=text(r.top1), texttemplate="%{text}",
                             colorbar=dict(x=0.27)), row=1, col=1)
    fig.add_trace(go.Heatmap(z=[[None if v is None else v for v in row] for row in r.a_kind],
                             x=list(r.targets), y=src, zmin=0, zmax=1, colorscale="Viridis",
                             text=text(r.a_kind), texttemplate="%{text}", showscale=False),
                  row=1, col=2)
    fig.add_trace(go.Heatmap(z=r.cosine, x=vec, y=vec, zmin=-1, zmax=1, colorscale="RdBu",
                             text=text(r.cosine), texttemplate="%{text}",
                             colorbar=dict(x=1.0)), row=1, col=3)
    for col in (1, 2, 3):
        fig.update_yaxes(autorange="reversed", row=1, col=col)
        fig.update_xaxes(title_text="B (prompts)" if col < 3 else "", row=1, col=col)
    fig.update_yaxes(title_text="A (vector)", row=1, col=1)
    fig.update_layout(title="cross-task transfer: vector of A in zero-shot prompts of B",
                      width=1500, height=520)
    return fig
