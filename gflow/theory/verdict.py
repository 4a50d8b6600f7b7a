"""One statement held against one trajectory: the [`Check`][] record and its verdict."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

VERDICTS = ("holds", "violated", "assumption not met", "trend only")


@dataclasses.dataclass(frozen=True)
class Check:
    """One statement held against one trajectory.

    **Fields:**

    - `name`: short identifier, e.g. "conservation".
    - `statement`: the statement in words, with its bound.
    - `source`: where it comes from ("Lemma (small-scale invariants), theory.md §4").
    - `verdict`: one of `VERDICTS`.
    - `observed`: the worst observed value (None when it could not be computed).
    - `bound`: the bound it is held to at that point.
    - `margin`: room left before the check fails, in the quantity's units: bound −
      observed + tolerance for an upper bound, observed − bound + tolerance for a lower
      one. Negative exactly when the verdict is "violated" (assumptions holding).
    - `time`: the time where the observed value is worst.
    - `tolerance`: the numerical slack allowed beyond the bound (solver error, round-off),
      included in `margin`; `note` says how it was derived.
    - `note`: how the tolerance was derived, assumptions that failed, caveats.
    """

    name: str
    statement: str
    source: str
    verdict: str
    observed: float | None = None
    bound: float | None = None
    margin: float | None = None
    time: float | None = None
    tolerance: float = 0.0
    note: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}; got {self.verdict!r}.")

    def to_dict(self) -> dict:
        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}


def judge(name, statement, source, observed, bound, *, upper, time=None, tolerance=0.0,
          assumptions=True, note="") -> Check:
    """A Check for `observed ≤ bound` (upper=True) or `observed ≥ bound`."""
    observed, bound, tolerance = float(observed), float(bound), float(tolerance)
    margin = (bound - observed if upper else observed - bound) + tolerance
    if not assumptions:
        verdict = "assumption not met"
    elif np.isnan(margin):
        verdict = "violated"
    else:
        verdict = "holds" if margin >= 0 else "violated"
    return Check(name, statement, source, verdict, observed, bound, margin, time, float(tolerance), note)


def missing(name, statement, source, what) -> Check:
    """A Check that could not be made: `what` the trajectory does not record."""
    return Check(name, statement, source, "assumption not met", note=f"not recorded: {what}")


def argmax2(v) -> tuple[int, int]:
    """(i, k) of the largest finite entry of a 2-d array: where a check is tightest."""
    v = np.where(np.isfinite(v), v, -np.inf)
    i, k = np.unravel_index(int(np.argmax(v)), v.shape)
    return int(i), int(k)


def plain(v):
    """`v` as JSON takes it: numpy scalars as Python numbers, inf and NaN as None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no inf or NaN; the Markdown table keeps them
    return v
