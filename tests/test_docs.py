"""The documentation in docs/ is present and what the code cites from it exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"theory\.md\s*§\s*(\d+)")
HEADING = re.compile(r"^##\s+(\d+)\.\s", re.M)


def _sections() -> set[str]:
    return set(HEADING.findall((ROOT / "docs" / "theory.md").read_text(encoding="utf-8")))


def _cited() -> dict[str, set[str]]:
    cited: dict[str, set[str]] = {}
    paths = [*(ROOT / "gflow").rglob("*.py"), *(ROOT / "notebooks").glob("*.py"), ROOT / "README.md"]
    for path in paths:
        for section in CITATION.findall(path.read_text(encoding="utf-8")):
            cited.setdefault(section, set()).add(str(path.relative_to(ROOT)))
    return cited


def test_docs_exist():
    for name in ("theory.md", "design.md"):
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"


def test_every_cited_section_exists():
    sections, cited = _sections(), _cited()
    assert cited, "no citation of theory.md found: the pattern no longer matches the code"
    missing = {s: sorted(paths) for s, paths in cited.items() if s not in sections}
    assert not missing, f"cited sections absent from docs/theory.md: {missing}"


def test_the_citation_check_can_fail(tmp_path):
    """A citation of a section that does not exist is caught by the same pattern."""
    assert "99" not in _sections()
    assert CITATION.findall("see theory.md §99") == ["99"]


def test_design_layout_names_every_module():
    """docs/design.md's layout table names every module and package of gflow/."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    pkg = ROOT / "gflow"
    names = {p.stem for p in pkg.glob("*.py") if p.stem not in ("__init__", "__main__")}
    names |= {p.name for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    absent = sorted(n for n in names if not re.search(rf"gflow/{re.escape(n)}(\.py|/)", text))
    assert not absent, f"docs/design.md's layout does not mention: {absent}"
