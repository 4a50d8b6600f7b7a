"""A list of [`Check`][] as a terminal table, a Markdown report and a JSON record."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from ..files import write_text
from .verdict import Check


def exit_code(checks: Sequence[Check]) -> int:
    """1 if some check is violated (its assumptions holding), else 0."""
    return int(any(c.verdict == "violated" for c in checks))


def format_table(checks: Sequence[Check]) -> str:
    """A plain-text table for the terminal: name, verdict, observed, bound, margin, time."""
    head = ("check", "verdict", "observed", "bound", "margin", "time")
    rows = [head] + [(c.name, c.verdict, _fmt(c.observed), _fmt(c.bound), _fmt(c.margin), _fmt(c.time)) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n_v = sum(c.verdict == "violated" for c in checks)
    lines.append(f"{len(checks)} checks, {n_v} violated")
    return "\n".join(lines)


def to_markdown(checks: Sequence[Check]) -> str:
    """The checks as a Markdown table, then the statements, sources and notes."""
    out = ["# Theorem checks", "", "| check | verdict | observed | bound | margin | time | source |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in checks:
        out.append(f"| {c.name} | {c.verdict} | {_fmt(c.observed)} | {_fmt(c.bound)} | {_fmt(c.margin)} | "
                   f"{_fmt(c.time)} | {c.source.replace('|', '∣')} |")
    out += ["", "## Statements", ""]
    for c in checks:
        out.append(f"- **{c.name}** ({c.verdict}): {c.statement}. Tolerance {_fmt(c.tolerance)}."
                   + (f" {c.note}." if c.note else ""))
    return "\n".join(out) + "\n"


def write_report(checks: Sequence[Check], folder: str | os.PathLike) -> None:
    """Write `checks.md` and `checks.json` into `folder`, each atomically."""
    folder = os.fspath(folder)
    write_text(os.path.join(folder, "checks.md"), to_markdown(checks))
    payload = dict(exit_code=exit_code(checks), checks=[c.to_dict() for c in checks])
    write_text(os.path.join(folder, "checks.json"), json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False))


def read_report(folder: str | os.PathLike) -> list[Check]:
    """The checks written by [`write_report`][]."""
    with open(os.path.join(os.fspath(folder), "checks.json"), encoding="utf-8") as f:
        return [Check(**c) for c in json.load(f)["checks"]]


def _fmt(v) -> str:
    """A number to four significant digits, None as a dash."""
    if v is None:
        return "—"
    if isinstance(v, float | int | np.floating):
        return f"{float(v):.4g}"
    return str(v)

