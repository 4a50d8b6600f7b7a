"""One statement held against one trajectory: the [`Check`][] record and its verdict."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

VERDICTS = ("holds", "violated", "assumption not met", "trend only", "not applicable")
"""What a check can say: the statement holds within its tolerance; it is violated while its
hypotheses hold (exit status 1); a hypothesis fails, so nothing is claimed; the statement has
unknown constants and the value is reported as a trend; or it does not apply to this kind of
run, or there was nothing to judge."""


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


def judge_worst(name, statement, source, observed, bound, tolerance, *, upper, times=None, time=None,
                assumptions=True, note="", where=None, informative=None) -> Check:
    """The tightest of many instances of one statement: `observed`, `bound` and `tolerance`
    are broadcast together (axis 0 indexes `times`) and the instance with the smallest
    margin, in units of its own tolerance, decides. A NaN instance counts as the worst; no instance at all gives "not
    applicable" (a check never holds on an empty set). `where(index)` describes the
    deciding instance in the note; `time` is reported when `times` is not given.

    `informative` marks the instances where the bound could be violated by a value the
    quantity can take (e.g. an alignment bound > 0): when there is none, the statement is
    vacuous on this run and the verdict says "not applicable" instead of a hollow "holds".
    """
    o, b, t = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (observed, bound, tolerance)))
    if o.size == 0:
        return Check(name, statement, source, "not applicable", note=_join("nothing to judge", note))
    if informative is not None:
        mask = np.broadcast_to(np.asarray(informative, bool), o.shape)
        if not mask.any():
            return Check(name, statement, source, "not applicable",
                         note=_join("vacuous here: the bound lies outside the quantity's range everywhere", note))
        note = _join(note, f"{int(mask.sum())} of {mask.size} instances informative")
    margin = (b - o if upper else o - b) + t
    closeness = margin / np.where(t > 0, t, 1.0)  # in units of each instance's own tolerance
    idx = np.unravel_index(int(np.argmin(np.where(np.isnan(margin), -np.inf, closeness))), o.shape)
    if times is not None and o.ndim > 0:
        time = float(np.asarray(times)[idx[0]])
    head = where(idx) if where is not None else ""
    return judge(name, statement, source, o[idx], b[idx], upper=upper, time=time, tolerance=t[idx],
                 assumptions=assumptions, note=_join(head, note))


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def not_applicable(name, statement, source, why) -> Check:
    """A Check whose statement does not concern this run, and `why`."""
    return Check(name, statement, source, "not applicable", note=why)


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
