"""Gradient flow dW_k/dt = −∂R/∂W_k integrated by `diffrax.diffeqsolve`.

An adaptive solver with a PID step-size controller follows the exact ODE; observables are
computed inside the compiled solve at every save time, and a terminating event stops the
solve once the excess risk is below a threshold. Failure is a recorded status, never an
exception. The solver machinery is in `gflow.solver`; the arc-length clock for plateaus of
any length in `gflow.clock`; [`FlowOptions`][] `clock` chooses between the clocks.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import clock as _clock, observables as obs, solver, theory, trajectory
from .clock import AUTO_PLATEAU_TIME, plateau_field, plateau_time
from .models import DeepLinear, check_input_width, trainable
from .problem import Problem
from .solver import SOLVERS, STATUSES, vector_field

__all__ = [
    "AUTO_PLATEAU_TIME", "CLOCKS", "SOLVERS", "STATUSES", "DenseSolution", "FlowOptions",
    "dense_solution", "plateau_field", "plateau_time", "solve", "vector_field",
]

CLOCKS = ("auto", "plain", "arclength")

class FlowOptions(eqx.Module):
    """How to integrate: solver, tolerances, horizon, save times, stopping rule.

    **Fields:**

    - `solver`: a name from `SOLVERS` (default "tsit5").
    - `rtol`, `atol`: tolerances of the PID step-size controller.
    - `t_max`: horizon of the solve.
    - `saves`: number of save times, t = 0 included.
    - `t_first`: first positive save time; save times are log-spaced from it to `t_max`
      (plateaus span many decades). `None` picks `t_max·1e-8`, capped at 1e-2.
    - `spacing`: "log" or "linear".
    - `stop_at_excess_risk`: terminate once R − R_min falls below this (0 disables).
    - `max_steps`: cap on solver steps (per phase of the "arclength" clock); reaching it
      is the status "max_steps".
    - `clock`: "plain" integrates in t; "arclength" integrates the plateau in the clock of
      [`plateau_field`][] and switches to ordinary time after the escape; "auto" (default)
      picks "arclength" when [`plateau_time`][] exceeds `AUTO_PLATEAU_TIME` = 1e8, i.e.
      when the weights would need more than 1e8 time units to move by their own norm at
      their initial speed, and "plain" otherwise (every moderate initialization).
    - `switch_at`: the "arclength" clock hands over to ordinary time once
      R − R_min ≤ switch_at · (R − R_min)(0), i.e. once the escape is under way.
    """

    solver: str = "tsit5"
    rtol: float = 1e-8
    atol: float = 1e-10
    t_max: float = 1e4
    saves: int = 200
    t_first: float | None = None
    spacing: str = "log"
    stop_at_excess_risk: float = 1e-12
    max_steps: int = 100_000
    clock: str = "auto"
    switch_at: float = 0.5

    def __check_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {sorted(SOLVERS)}.")
        for name in ("rtol", "atol", "t_max"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite positive number; got {v!r}.")
        if int(self.saves) < 2:
            raise ValueError(f"saves must be at least 2 (t = 0 and one more); got {self.saves}.")
        if self.spacing not in ("log", "linear"):
            raise ValueError(f"spacing must be 'log' or 'linear'; got {self.spacing!r}.")
        if self.t_first is not None and not (0 < self.t_first < self.t_max):
            raise ValueError(f"t_first must lie in (0, t_max); got {self.t_first}.")
        if not (self.stop_at_excess_risk >= 0):
            raise ValueError(f"stop_at_excess_risk must be ≥ 0; got {self.stop_at_excess_risk}.")
        if int(self.max_steps) < 1:
            raise ValueError(f"max_steps must be ≥ 1; got {self.max_steps}.")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}; got {self.clock!r}.")
        if not (0 < self.switch_at < 1):
            raise ValueError(f"switch_at must lie in (0, 1); got {self.switch_at}.")

    def first_time(self) -> float:
        """The first positive save time (`t_first`, or its default)."""
        return self.t_first if self.t_first is not None else min(1e-2, self.t_max * 1e-8)

    def save_times(self) -> np.ndarray:
        """0 followed by `saves − 1` times up to t_max (log- or linearly spaced)."""
        if self.spacing == "linear":
            return np.linspace(0.0, self.t_max, self.saves)
        return np.concatenate([[0.0], np.geomspace(self.first_time(), self.t_max, self.saves - 1)])


_RECORDS = (
    obs.Observable(solver.ENERGY, None, (), "E(t) = ∫₀ᵗ ‖∇R‖² ds, integrated with the flow as an extra state"),
    obs.Observable(solver.STEPS, None, (), "accepted solver steps up to this save"),
)
"""What every solve records beside the observables asked for (see `gflow.solver`)."""


class DenseSolution(eqx.Module):
    """A solve with dense output: the network at any time in [0, t_final]."""

    solution: diffrax.Solution
    static: DeepLinear

    def model_at(self, t) -> DeepLinear:
        """W(t), from the solver's own interpolant (accurate to its tolerance)."""
        return eqx.combine(self.solution.evaluate(t)[0], self.static)

    def energy_at(self, t):
        """E(t) = ∫₀ᵗ ‖∇R‖² ds, integrated with the flow."""
        return self.solution.evaluate(t)[1]


@eqx.filter_jit
def _integrate_dense(y0, static, problem, initial, t_max, stop, options: solver.Numerics):
    saveat = diffrax.SaveAt(t1=True, dense=True)
    return solver.diffeqsolve(y0, static, problem, initial, 0.0, t_max, saveat, stop, options)


def dense_solution(model: DeepLinear, problem: Problem, options: FlowOptions = FlowOptions()) -> DenseSolution:
    """Integrate like [`solve`][] but keep the dense interpolant instead of observables.

    For independent checks (the energy identity as an integral) and for evaluating the
    weights at times chosen after the solve.
    """
    check_input_width(model, problem.d)
    params, static = eqx.partition(model, trainable(model))
    sol = _integrate_dense(
        solver.initial_state(params), static, problem, model, jnp.asarray(options.t_max), jnp.asarray(options.stop_at_excess_risk), solver.numerics(options)
    )
    return DenseSolution(sol, static)


def solve(
    model: DeepLinear,
    problem: Problem,
    options: FlowOptions = FlowOptions(),
    observables: Sequence[str] = obs.DEFAULT,
):
    """Integrate gradient flow from `model` and record `observables` at the save times.

    **Arguments:**

    - `model`: the network at t = 0 (an [`MLP`][] or [`Residual`][]).
    - `problem`: the regression problem.
    - `options`: a [`FlowOptions`][].
    - `observables`: registry names (see `gflow.observables.REGISTRY`).

    **Returns:** an `xarray.Dataset` (see [`gflow.trajectory`][]) with the observables
    on the `time` axis, the initial and final weights, and the status, step counts,
    problem constants and solver settings in `attrs`.
    """
    check_input_width(model, problem.d)
    observables = obs.get(observables)
    params, static = eqx.partition(model, trainable(model))
    start = _time.perf_counter()
    log10_plateau = float(plateau_time(model, problem))
    clock = options.clock
    if clock == "auto":
        clock = "arclength" if log10_plateau > math.log10(AUTO_PLATEAU_TIME) else "plain"
    if clock == "arclength":
        t_offset, t_local, values, final_state, status, info = _clock.solve_arclength(
            solver.initial_state(params), static, problem, model, options, observables
        )
    else:
        t_offset, t_local, values, final_state, status, info = _solve_plain(
            solver.initial_state(params), static, problem, model, options, observables
        )
    times = t_offset + t_local
    wall = _time.perf_counter() - start
    final = eqx.combine(final_state[0], static)
    info = dict(status=status, **info, wall_time_s=wall, method="gradient_flow", plateau_time_log10=log10_plateau,
                **theory.initial_constants(model, problem))
    ds = trajectory.build(times, values, (*observables, *_RECORDS), model, final, problem, options=options, info=info)
    return ds.assign(
        t_offset=("time", t_offset, {"description": "absolute time = t_offset + t_local (t_switch after the switch)"}),
        t_local=("time", t_local, {"description": "time since t_offset, exact where t_offset + t_local rounds"}),
    )


def _solve_plain(y0, static, problem, model, options: FlowOptions, observables):
    """One solve in ordinary time; returns what `clock.solve_arclength` returns."""
    ts = jnp.asarray(options.save_times())
    stop = jnp.asarray(options.stop_at_excess_risk)
    sol = solver.integrate(y0, static, problem, model, ts, stop, solver.numerics(options), observables)
    saved, final_state = (jax.tree.map(np.asarray, s) for s in sol.ys[:2])
    t_end = float(np.asarray(sol.ts[1])[0])
    times, values = solver.trim(np.asarray(sol.ts[0]), saved)
    values[solver.STEPS] = solver.steps_before(sol.ts[2], times)
    final_state = jax.tree.map(lambda x: jnp.asarray(x[0]), final_state)
    status = solver.status(sol.result, {k: v[-1] for k, v in values.items()})
    stats = solver.stats(sol)
    info = dict(clock="plain", t_final=t_end, t_switch=math.nan, t_final_local=t_end,
                num_steps_arclength=0, num_steps_plain=stats["num_steps"], **stats)
    return np.zeros_like(times), times, values, final_state, status, info
