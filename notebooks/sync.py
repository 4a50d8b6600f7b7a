"""Write the notebooks of this folder from their sources: `NN_name.py` → `NN_name.ipynb`.

The notebooks are authored as jupytext percent-format scripts (`# %%` starts a code cell,
`# %% [markdown]` a markdown cell, and a magic is written commented out: `# %matplotlib inline`).
Edit the `.py`, then regenerate the `.ipynb` and commit both:

    .venv/bin/python notebooks/sync.py                    # every notebook
    .venv/bin/python notebooks/sync.py 02_residual.py     # some of them
    .venv/bin/python notebooks/sync.py --check            # exit 1 if an .ipynb is not up to date

The `.ipynb` files are written without outputs, with numbered cell ids (c00, c01, …): regenerating
an unchanged source gives an identical file. `tests/test_notebooks.py` checks that every `.ipynb`
agrees cell for cell with its source and executes every notebook top to bottom.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
SOURCE_GLOB = "[0-9][0-9]_*.py"  # a notebook's source: NN_name.py (this script is not one)


def sources() -> list[Path]:
    return sorted(HERE.glob(SOURCE_GLOB))


def render(source: Path) -> str:
    """The text of the .ipynb generated from a jupytext percent-format source."""
    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    for i, cell in enumerate(nb.cells):
        cell.id = f"c{i:02d}"
        cell.metadata = {}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.validate(nb)
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="sources to convert (default: every NN_*.py here)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if an .ipynb is out of date")
    args = parser.parse_args(argv)
    stale = []
    for source in [(f if f.exists() else HERE / f).resolve() for f in args.files] or sources():
        target = source.with_suffix(".ipynb")
        text = render(source)
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        if args.check:
            stale.append(target.name)
        else:
            target.write_text(text, encoding="utf-8")
            print("wrote", target)
    if stale:
        print("out of date (run notebooks/sync.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
