"""The notebooks in notebooks/: generated from their sources, and each runs top to bottom.

Each notebook `NN_name.ipynb` is generated from a jupytext percent-format source `NN_name.py`
(`notebooks/sync.py`); the two must agree cell for cell, so an edit of a source that was not
followed by `python notebooks/sync.py` fails here, fast.

The notebooks are executed in memory with nbclient (the files on disk keep no outputs),
with notebooks/ as the working directory, in a kernel running this interpreter.
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))  # the glob of notebooks/sync.py
STEMS = sorted({p.stem for p in PATHS} | {p.stem for p in SOURCES})
CELL_TIMEOUT = 300
REGENERATE = "edit the .py, then run `python notebooks/sync.py`"


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
        assert not dirty, f"{path.name}: cells {dirty} have outputs; regenerate it: python notebooks/sync.py"


def _read_source(path: Path):
    try:
        import jupytext
    except ImportError:  # in the `test` extra: a missing jupytext must not pass as "in sync"
        pytest.fail("jupytext is not installed: pip install -c constraints.txt -e '.[test]'", pytrace=False)
    return jupytext.read(path, fmt="py:percent")


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_agrees_with_its_source(stem):
    source, notebook = NOTEBOOKS / f"{stem}.py", NOTEBOOKS / f"{stem}.ipynb"
    assert source.exists(), f"{notebook.name} has no source {source.name}; notebooks are generated: {REGENERATE}"
    assert notebook.exists(), f"{source.name} has no notebook {notebook.name}: run `python notebooks/sync.py`"
    # A source is plain Python: magics are written commented out (# %matplotlib inline).
    compile(source.read_text(encoding="utf-8"), str(source), "exec")

    expected = [(c.cell_type, c.source) for c in _read_source(source).cells]
    actual = [(c.cell_type, c.source) for c in nbformat.read(notebook, as_version=4).cells]
    for i, ((got_type, got), (want_type, want)) in enumerate(zip(actual, expected)):
        if (got_type, got) != (want_type, want):
            a, b = f"{notebook.name} ({got_type})", f"{source.name} ({want_type})"
            diff = "\n".join(difflib.unified_diff(got.splitlines(), want.splitlines(), a, b, lineterm=""))
            pytest.fail(f"{notebook.name} differs from {source.name} at cell {i}; {REGENERATE}\n{diff}", pytrace=False)
    counts = f"{notebook.name} has {len(actual)} cells, {source.name} {len(expected)}"
    assert len(actual) == len(expected), f"{counts}; {REGENERATE}"


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
