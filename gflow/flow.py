"""Gradient flow dW_k/dt = −∂R/∂W_k integrated by `diffrax.diffeqsolve`.

An adaptive solver with a PID step-size controller follows the exact ODE; observables are
computed inside the compiled solve at every save time, and a terminating event stops the
solve once the excess risk is below a threshold. Failure is a recorded status, never an
exception. The solver machinery is in `gflow.solver`; the arc-length clock for plateaus of
any length in `gflow.clock`; [`FlowOptions`][] `clock` chooses between the clocks.

The same engine integrates two continuous-time models of GD at a finite step size η
([`FlowOptions`][] `dynamics`, theory.md §11): the modified-equation flow (`gflow.dynamics`)
and the central flow (`gflow.central`), with the same observables, Dataset and checks.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from . import central, clock as _clock, compilation, observables as obs, solver, theory, trajectory
from .clock import AUTO_PLATEAU_TIME, plateau_field, plateau_time
from .dynamics import DYNAMICS, GradientFlow, ModifiedFlow
from .models import DeepLinear, check_input_width, trainable
from .problem import Problem
from .solver import SOLVERS, STATUSES, vector_field
from .watch import Watch, solve_in_segments

__all__ = [
    "AUTO_PLATEAU_TIME", "CLOCKS", "DYNAMICS", "SOLVERS", "STATUSES", "DenseSolution", "FlowOptions",
    "dense_solution", "plateau_field", "plateau_time", "solve", "solve_and_interpolate", "vector_field",
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
    - `dynamics`: "gradient_flow" (default); "modified", GF on R̃ = R + (η/4)‖∇R‖²; or
      "central", the central flow of GD at the edge of stability (theory.md §11). Both of
      the last two model GD with step `step_size` in time t = kη, in plain time.
    - `step_size`: η of "modified" and "central" (required there, unused by GF).
    - `edge_eigenpairs`: how many Hessian eigenvalues the central flow can hold at 2/η
      at once (1 to 5; one more is watched). More reaching the edge is the status
      "edge_limit".
    - `stop_at_grad_norm_sq`: the stopping rule of a network with an activation (GELU),
      whose R_min is unknown: terminate once ‖∇R‖² falls below this (0 disables); linear
      networks stop on `stop_at_excess_risk`.
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
    dynamics: str = "gradient_flow"
    step_size: float | None = None
    edge_eigenpairs: int = 2
    stop_at_grad_norm_sq: float = 1e-14

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
        self._check_dynamics()

    def _check_dynamics(self):
        if self.dynamics not in DYNAMICS:
            raise ValueError(f"dynamics must be one of {DYNAMICS}; got {self.dynamics!r}.")
        eta = self.step_size
        if self.dynamics == "gradient_flow":
            if eta is not None:
                raise ValueError("step_size is the η of dynamics 'modified' or 'central'; gradient flow has none.")
            return
        if not (isinstance(eta, int | float) and math.isfinite(eta) and eta > 0):
            raise ValueError(f"dynamics {self.dynamics!r} needs a finite positive step_size; got {eta!r}.")
        if self.clock == "arclength":
            raise ValueError(f"dynamics {self.dynamics!r} runs in plain time; clock 'arclength' is for gradient flow.")
        if not (1 <= int(self.edge_eigenpairs) <= 5):
            raise ValueError(f"edge_eigenpairs must lie in 1..5; got {self.edge_eigenpairs}.")

    def first_time(self) -> float:
        """The first positive save time (`t_first`, or its default)."""
        return self.t_first if self.t_first is not None else min(1e-2, self.t_max * 1e-8)

    def save_times(self) -> np.ndarray:
        """0 followed by `saves − 1` times up to t_max (log- or linearly spaced)."""
        if self.spacing == "linear":
            return np.linspace(0.0, self.t_max, self.saves)
        if self.saves == 2:  # geomspace(a, b, 1) is [a]: the one time after 0 is t_max
            return np.array([0.0, self.t_max])
        return np.concatenate([[0.0], np.geomspace(self.first_time(), self.t_max, self.saves - 1)])


_RECORDS = (
    obs.Observable(solver.ENERGY, None, (), "E(t), integrated with the flow as an extra state: ∫₀ᵗ ‖∇R‖² ds "
                   "(gradient flow), ∫₀ᵗ ‖∇R̃‖² ds (modified flow), ∫₀ᵗ −⟨∇R, dW/dt⟩ ds (central flow)"),
    obs.Observable(solver.STEPS, None, (), "accepted solver steps up to this save"),
)
"""What every solve records beside the observables asked for (see `gflow.solver`)."""


class DenseSolution(eqx.Module):
    """A solve with dense output: the network at any time in [0, t_final]. A solve made of
    several Diffrax solves (the central flow's phases, a long solve's segments) has one
    solution per piece (`phases`, over [`starts`, `ends`])."""

    phases: tuple[diffrax.Solution, ...]
    static: DeepLinear
    ends: jax.Array
    starts: tuple[float, ...] = eqx.field(static=True, default=(0.0,))

    @property
    def solution(self) -> diffrax.Solution:
        """The last piece's solution."""
        return self.phases[-1]

    @property
    def t_final(self) -> float:
        return float(self.ends[-1])

    @property
    def converged(self) -> bool:
        """Whether the solve ended at its convergence event."""
        return bool(self.solution.result == diffrax.RESULTS.event_occurred)

    def _evaluate(self, t):
        parts = [sol.evaluate(jnp.clip(t, t0, t1)) for sol, t0, t1 in zip(self.phases, self.starts, self.ends)]
        which = sum(jnp.asarray(t >= t0, int) for t0 in self.starts[1:])
        return jax.tree.map(lambda *xs: jnp.stack(xs)[which], *parts)

    def model_at(self, t) -> DeepLinear:
        """W(t), from the solver's own interpolant (accurate to its tolerance)."""
        return eqx.combine(self._evaluate(t)[0], self.static)

    def energy_at(self, t):
        """E(t), integrated with the flow (see `_RECORDS`)."""
        return self._evaluate(t)[1]


@eqx.filter_jit
def _integrate_dense(y0, static, problem, initial, t0, t_max, stop, options: solver.Numerics, dynamics):
    saveat = diffrax.SaveAt(t1=True, dense=True)
    return solver.diffeqsolve(y0, static, problem, initial, t0, t_max, saveat, stop, options, dynamics)


def dense_solution(model: DeepLinear, problem: Problem, options: FlowOptions = FlowOptions()) -> DenseSolution:
    """Integrate like [`solve`][] but keep the dense interpolant instead of observables.

    For independent checks (the energy identity as an integral) and for evaluating the
    weights at times chosen after the solve (distances to GD).
    """
    check_input_width(model, problem.d)
    params, static = eqx.partition(model, trainable(model))
    y0, stop, numerics = solver.initial_state(params), jnp.asarray(options.stop_at_excess_risk), solver.numerics(options)
    t_max = jnp.asarray(options.t_max)

    def integrate(y, t0, dynamics, t1=None):
        t1 = t_max if t1 is None else jnp.asarray(t1)
        sol = _integrate_dense(y, static, problem, model, jnp.asarray(t0), t1, stop, numerics, dynamics)
        return sol, float(sol.ts[-1]), jax.tree.map(lambda v: v[-1], sol.ys)

    if options.dynamics != "central":
        sol, t_end, _ = integrate(y0, 0.0, _plain_dynamics(options))
        return DenseSolution((sol,), static, jnp.asarray([t_end]))
    runs, _ = central.phases(y0, static, problem, integrate, options.step_size, options.edge_eigenpairs)
    return _dense([(r.t0, r.t1, r.solution) for r in runs], static)


def _dense(pieces, static) -> DenseSolution:
    """The [`DenseSolution`][] of consecutive solves with dense output, given as (start
    time, end time, Diffrax solution)."""
    starts, ends, sols = zip(*pieces)
    return DenseSolution(sols, static, jnp.asarray(ends), tuple(float(t) for t in starts))


def _plain_dynamics(options: FlowOptions):
    """The dynamics of a single-phase solve: GF, or the modified flow at η."""
    if options.dynamics == "modified":
        return ModifiedFlow(jnp.asarray(float(options.step_size)))
    return GradientFlow()


def solve(
    model: DeepLinear,
    problem: Problem,
    options: FlowOptions = FlowOptions(),
    observables: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
):
    """Integrate gradient flow from `model` and record `observables` at the save times.

    **Arguments:**

    - `model`: the network at t = 0 (an [`MLP`][] or [`Residual`][]).
    - `problem`: the regression problem.
    - `options`: a [`FlowOptions`][].
    - `observables`: registry names (see `gflow.observables.REGISTRY`); None: those of
      `gflow.observables.DEFAULT` that the network has. One a network lacks (a linear-only
      observable of a GELU network) is a `ValueError`.
    - `progress`: called with a line of text while a long plain-time solve runs (t reached,
      steps, step size) and once if it is found stiff (see `gflow.watch`; the verdict is
      also in `attrs["stiffness"]`).

    **Returns:** an `xarray.Dataset` (see [`gflow.trajectory`][]) with the observables
    on the `time` axis, the initial and final weights, and the status, step counts,
    problem constants and solver settings in `attrs`.
    """
    return _solve(model, problem, options, observables, progress, dense=False)[0]


def solve_and_interpolate(
    model: DeepLinear,
    problem: Problem,
    options: FlowOptions = FlowOptions(),
    observables: Sequence[str] | None = None,
) -> tuple[xr.Dataset, DenseSolution]:
    """[`solve`][], and the same solve's interpolant: (the Dataset, a [`DenseSolution`][],
    the network at any time up to the end). One integration where [`solve`][] then
    [`dense_solution`][] make two; for the central flow, the integration is most of the
    cost of comparing it with GD. In ordinary time only (not the arc-length clock)."""
    return _solve(model, problem, options, observables, None, dense=True)


def _solve(model, problem, options: FlowOptions, observables, progress, dense: bool):
    """[`solve`][]'s work: (the Dataset, its [`DenseSolution`][] with `dense`, else None)."""
    check_input_width(model, problem.d)
    observables = obs.get(observables, model)
    compilation.release_if_crowded()
    params, static = eqx.partition(model, trainable(model))
    y0 = solver.initial_state(params)
    start = _time.perf_counter()
    log10_plateau = float(plateau_time(model, problem))
    clock = options.clock
    if clock == "auto":
        clock = "arclength" if log10_plateau > math.log10(AUTO_PLATEAU_TIME) and options.dynamics == "gradient_flow" \
            else "plain"
    records = _RECORDS
    if options.dynamics == "central":
        *out, runs = central.solve(y0, static, problem, model, options, observables, options.step_size,
                                   options.edge_eigenpairs, dense)
        pieces = [(r.t0, r.t1, r.solution) for r in runs]
        records += central.CentralFlow.RECORDS
    elif clock == "arclength":
        if dense:
            raise ValueError("the arc-length clock keeps no dense solution: set clock = \"plain\"")
        out = _clock.solve_arclength(y0, static, problem, model, options, observables)
    else:
        dynamics = _plain_dynamics(options)
        *out, pieces = _solve_plain(y0, static, problem, model, options, observables, dynamics, progress, dense)
        records += dynamics.RECORDS
    t_offset, t_local, values, final_state, status, info = out
    times = t_offset + t_local
    wall = _time.perf_counter() - start
    final = eqx.combine(final_state[0], static)
    info = dict(status=status, **{"stiffness": "", **info}, wall_time_s=wall, method="gradient_flow", dynamics=options.dynamics,
                step_size=0.0 if options.step_size is None else float(options.step_size),
                plateau_time_log10=log10_plateau, **theory.initial_constants(model, problem))
    ds = trajectory.build(times, values, (*observables, *records), model, final, problem, options=options, info=info)
    ds = ds.assign(
        t_offset=("time", t_offset, {"description": "absolute time = t_offset + t_local (t_switch after the switch)"}),
        t_local=("time", t_local, {"description": "time since t_offset, exact where t_offset + t_local rounds"}),
    )
    return ds, (_dense(pieces, static) if dense else None)


def _solve_plain(y0, static, problem, model, options: FlowOptions, observables, dynamics, report=None,
                 dense: bool = False):
    """One solve in ordinary time, in segments (`gflow.watch`: progress and stiffness reported
    to `report`); returns what `clock.solve_arclength` returns, and each segment's (start, end,
    Diffrax solution), which holds its interpolant with `dense`."""
    ts = solver.as_save_times(options.save_times())
    stop = jnp.asarray(options.stop_at_excess_risk)

    def integrate(y, t0, numerics):
        return solver.integrate(y, static, problem, model, ts, stop, numerics, observables, t0=jnp.asarray(t0),
                                dynamics=dynamics, dense=dense)

    watch = Watch(report, options.solver, options.t_max, options.max_steps)
    times, values, final_state, result, stats, step_times, segments = solve_in_segments(
        integrate, y0, float(ts[0]), options, watch, static, problem)
    t_end = float(times[-1])
    values[solver.STEPS] = solver.steps_before(step_times, times)
    final_state = jax.tree.map(jnp.asarray, final_state)
    status = solver.status(result, {k: v[-1] for k, v in values.items()})
    info = dict(clock="plain", t_final=t_end, t_switch=math.nan, t_final_local=t_end,
                num_steps_arclength=0, num_steps_plain=stats["num_steps"], stiffness=watch.note, **stats)
    return np.zeros_like(times), times, values, final_state, status, info, segments
