"""The critical step size: the largest η from which GD converges, found numerically and
set beside its predictions 2/S_lower (theory.md §3) and 2/S(W_GF)."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from .. import flow, observables as obs
from ..models import DeepLinear
from ..problem import Problem
from .run import bounds, positive_int, run


@dataclasses.dataclass(frozen=True)
class CriticalStepSize:
    """The largest η from which GD converges, found numerically, beside its predictions.

    **Fields:**

    - `eta`: the estimate (midpoint of the final bracket).
    - `lower`, `upper`: the bracket: GD converges at `lower` and fails at `upper`.
    - `eta_theory`: 2/S_lower (above it GD cannot converge; theory.md §3).
    - `eta_flow`: 2/S(W_GF), with W_GF the minimizer gradient flow reaches from the same
      initialization (NaN when not computed).
    - `evaluations`: the (η, status) pairs tried, in order.
    - `steps`: the GD step budget that defines "converges".
    """

    eta: float
    lower: float
    upper: float
    eta_theory: float
    eta_flow: float
    evaluations: tuple[tuple[float, str], ...]
    steps: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class _Trials:
    """Runs GD from one network at a few step sizes and keeps every (η, status) it saw."""

    def __init__(self, model: DeepLinear, problem: Problem, steps: int, tol: float):
        self.model, self.problem, self.steps, self.tol = model, problem, steps, tol
        self.tried: list[tuple[float, str]] = []

    def converges(self, etas) -> list[bool]:
        ds = run(self.model, self.problem, etas, self.steps, record_every=self.steps, observables=(),
                 final_sharpness=False, tol=self.tol)
        st = [str(s) for s in ds.status.values[:, 0]]
        self.tried.extend(zip(map(float, etas), st))
        return [s == "converged" for s in st]


def _bracket(trials: _Trials, eta: float, max_rounds: int) -> tuple[float, float]:
    """(lo, hi) with GD converging at lo and failing at hi: double from `eta` until a run
    fails, then halve below the failure until one converges."""
    lo, hi = None, None
    for _ in range(max_rounds):  # find a failing η
        if not trials.converges([eta])[0]:
            hi = eta
            break
        lo, eta = eta, 2 * eta
    if hi is None:
        raise RuntimeError(f"GD still converges at η = {eta / 2:.3g}; no failing step size found.")
    eta = hi / 2
    while lo is None:
        if len(trials.tried) > 2 * max_rounds:
            raise RuntimeError(f"GD fails at every η ≥ {eta:.3g} within {trials.steps} steps; raise steps.")
        if trials.converges([eta])[0]:
            lo = eta
        else:
            hi, eta = eta, eta / 2
    return lo, hi


def _refine(trials: _Trials, lo: float, hi: float, rtol: float, per_round: int, max_rounds: int):
    """Multisection of the bracket: `per_round` step sizes spread geometrically in (lo, hi)
    per round, keeping the interval below the first failure."""
    for _ in range(max_rounds):
        if hi / lo - 1 <= rtol:
            break
        grid = lo * (hi / lo) ** (np.arange(1, per_round + 1) / (per_round + 1))
        ok = trials.converges(grid)
        first_fail = next((j for j, c in enumerate(ok) if not c), None)
        if first_fail is None:
            lo = float(grid[-1])
        else:
            hi = float(grid[first_fail])
            lo = float(grid[first_fail - 1]) if first_fail > 0 else lo
    return lo, hi


def _flow_step_size(model: DeepLinear, problem: Problem, flow_options) -> float:
    """2/S(W_GF) at the end of a dense GF solve under `flow_options`."""
    sol = flow.dense_solution(model, problem, flow_options)
    final = sol.model_at(sol.t_final)
    return 2.0 / float(obs.sharpness(final, problem))


def critical_step_size(
    model: DeepLinear,
    problem: Problem,
    steps: int,
    *,
    rtol: float = 1e-2,
    tol: float = 1e-8,
    per_round: int = 7,
    max_rounds: int = 30,
    flow_options=None,
) -> CriticalStepSize:
    """The largest η for which GD from `model` converges within `steps` steps.

    Bracketing first (from η = 2/S_lower, halving until a run converges and doubling until
    one fails), then multisection: each round runs `per_round` step sizes spread
    geometrically inside the bracket as one vectorized call and keeps the interval below the
    first failure, until upper/lower − 1 ≤ `rtol`. Convergence need not be monotone in η
    near the threshold; the result is the edge of the first failure above a converging η.

    **Arguments:**

    - `model`, `problem`: the initialization and the data.
    - `steps`: GD step budget (a run converges when R − R_min ≤ `tol` after it).
    - `rtol`: relative width of the final bracket.
    - `per_round`: step sizes per round (1 is plain bisection).
    - `max_rounds`: cap on bracketing and refinement rounds each.
    - `flow_options`: a `FlowOptions` for the GF run that gives 2/S(W_GF); `None` skips it.
    """
    steps = positive_int(steps, "steps")
    per_round = positive_int(per_round, "per_round")
    if not (isinstance(rtol, int | float) and 0 < rtol < 1):
        raise ValueError(f"rtol must lie in (0, 1); got {rtol!r}.")
    if isinstance(model, DeepLinear) and jnp.ndim(model.p) == 2:
        raise ValueError("critical_step_size takes one network, not a batch.")
    eta_theory = bounds(problem, model)["eta_crit"]
    trials = _Trials(model, problem, steps, tol)
    lo, hi = _bracket(trials, eta_theory, max_rounds)
    lo, hi = _refine(trials, lo, hi, rtol, per_round, max_rounds)
    return CriticalStepSize(
        eta=math.sqrt(lo * hi),
        lower=lo,
        upper=hi,
        eta_theory=eta_theory,
        eta_flow=math.nan if flow_options is None else _flow_step_size(model, problem, flow_options),
        evaluations=tuple(trials.tried),
        steps=steps,
    )
