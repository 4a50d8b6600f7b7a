"""Every notebook in notebooks/ runs top to bottom, headless, without an error.

The notebooks are executed in memory with nbclient (the files on disk keep no outputs),
with notebooks/ as the working directory, in a kernel running this interpreter.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 300


def _execute(nb):
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    # jupyter_client starts a kernelspec whose argv begins with "python" with sys.executable,
    # so the kernel runs this interpreter (the venv's) and imports the gflow under test.
    return client.execute()


def test_notebooks_exist():
    assert PATHS, f"no notebooks in {NOTEBOOKS}"


def test_notebooks_are_stored_without_outputs():
    for path in PATHS:
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them (or regenerate with make_notebooks.py)"


@pytest.mark.slow
def test_kernel_runs_this_interpreter():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys, gflow; print(sys.executable); print(gflow.__file__)")]
    _execute(nb)
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    executable, package = text.split()[:2]
    assert os.path.abspath(executable) == os.path.abspath(sys.executable)
    import gflow

    assert os.path.realpath(package) == os.path.realpath(gflow.__file__)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_executes(path):
    nb = nbformat.read(path, as_version=4)
    try:
        _execute(nb)
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell failed\n{e}", pytrace=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
