"""The layering of fvlens: imports only look down, no import cycle, small modules.

Every module has a level (longest matching prefix in ``LEVELS``); a module may import only
modules of its own level or below, and the import graph (lazy imports inside functions
included) has no cycle. The package ``fvlens/__init__.py`` is exempt: it re-exports the public
API lazily from every layer. See docs/concepts.md ("Layers") for the map.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "fvlens"

LEVELS = {
    # 0: data and small utilities that need nothing from fvlens
    "fvlens.tasks": 0, "fvlens._taskgen": 0, "fvlens._lazy": 0, "fvlens.provenance": 0, "fvlens.tables": 0,
    "fvlens.batch": 0, "fvlens.importers": 0, "fvlens.modeltype": 0,
    # 1: prompts
    "fvlens.prompts": 1, "fvlens.chat": 1,
    # 2: models and hooks
    "fvlens.models": 2, "fvlens.hooks": 2, "fvlens.backend": 2,
    # 3: the forward core
    "fvlens.forward": 3, "fvlens.prefix": 3,
    # 4: what is computed from activations: heads, AttnLRP, vectors, generation
    "fvlens.activations": 4, "fvlens.heads": 4, "fvlens.attnlrp": 4,
    "fvlens.steering": 4, "fvlens.generation": 4, "fvlens.vectors": 4,
    # 5: evaluation and injection sweeps
    "fvlens.evaluation": 5, "fvlens.injection": 5, "fvlens.instruct": 5, "fvlens.lastpos": 5,
    # 6: the run plan and the result types
    "fvlens.plan": 6, "fvlens.results": 6, "fvlens.runconfig": 6,
    # 7: the jobs: the main job, analyses, relational studies, sweeps
    "fvlens.pipeline": 7, "fvlens.analyses": 7, "fvlens.relational": 7, "fvlens.sweep": 7,
    # 8: figures and reports
    "fvlens.plots": 8, "fvlens.report": 8,
    # 9: command lines
    "fvlens.cli": 9,
}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out[name] = path
    return out


def _level(name: str) -> int:
    best = max((p for p in LEVELS if name == p or name.startswith(p + ".")), key=len,
               default=None)
    if best is None:
        raise KeyError(name)
    return LEVELS[best]


def _imports(path: Path, modules: set[str]) -> set[str]:
    """fvlens modules imported anywhere in the file (``from fvlens.x import y`` counts
    ``fvlens.x.y`` when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("fvlens"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fvlens"))
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    names = set(mods)
    return {m: _imports(p, names) - {m} for m, p in mods.items() if m != "fvlens"}


def test_every_module_has_a_level():
    missing = [m for m in _modules() if m != "fvlens" and not _safe_level(m)]
    assert not missing, f"add these modules to tests/test_structure.py LEVELS: {missing}"


def _safe_level(name: str) -> bool:
    try:
        _level(name)
        return True
    except KeyError:
        return False


def _upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((m, t) for m, targets in graph.items() for t in targets
                  if t != "fvlens" and _level(t) > _level(m))


def test_imports_only_look_down():
    upward = _upward(_graph())
    assert not upward, "upward imports (module -> imported module): " + ", ".join(
        f"{m} (level {_level(m)}) -> {t} (level {_level(t)})" for m, t in upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w == "fvlens" or w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_modules_are_small():
    big = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by concept): {big}"


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = {"fvlens.forward": {"fvlens.evaluation"}, "fvlens.evaluation": {"fvlens.forward"},
             "fvlens.heads.select": {"fvlens.pipeline"}, "fvlens.pipeline": set()}
    assert _upward(graph) == [("fvlens.forward", "fvlens.evaluation"),
                              ("fvlens.heads.select", "fvlens.pipeline")]
    assert _cycles(graph) == [["fvlens.evaluation", "fvlens.forward"]]


def test_one_final_norm_unembed_softcap():
    """The residual → logits step exists once, in ``fvlens.forward.final_logits``: no other
    module calls the model's final norm or unembedding, or soft-caps the output logits."""
    calls = re.compile(r"\.(ln_final|unembed)\(|output_logits_soft_cap\)")
    users = sorted(m for m, p in _modules().items() if calls.search(p.read_text()))
    # attnlrp.rules reads the cap to give its tanh the identity rule; it computes no logits
    assert users == ["fvlens.attnlrp.rules", "fvlens.forward"], users


def test_no_public_name_is_shadowed_by_a_submodule():
    """Importing a submodule binds it on its package, so a lazily exported name equal to a
    submodule's (``fvlens.evaluate`` once was both) silently becomes the module once that
    submodule is imported anywhere."""
    import importlib
    import types

    for name in sorted(m for m in _modules() if not m.endswith("__main__")):
        importlib.import_module(name)
    for package in sorted(m for m, p in _modules().items() if p.name == "__init__.py"):
        pkg = importlib.import_module(package)
        for name in getattr(pkg, "__all__", ()):
            assert not isinstance(getattr(pkg, name), types.ModuleType), (package, name)
