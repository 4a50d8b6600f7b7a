"""Gradient flow dW_k/dt = −∂R/∂W_k integrated by `diffrax.diffeqsolve`.

An adaptive solver with a PID step-size controller follows the exact ODE; observables are
computed inside the compiled solve at every save time (`SaveAt(fn=...)`), and a terminating
event stops the solve once the excess risk is below a threshold. Failure is a recorded
status, never an exception.
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

from . import observables as obs
from .models import DeepLinear, end_to_end, trainable
from .problem import Problem

SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
    "ralston": diffrax.Ralston,
    "kvaerno3": diffrax.Kvaerno3,
    "kvaerno4": diffrax.Kvaerno4,
    "kvaerno5": diffrax.Kvaerno5,
}
"""Adaptive solvers by name; the kvaerno* are implicit (for stiff flows)."""

STATUSES = ("converged", "reached_t_max", "max_steps", "non_finite", "solver_failed")


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
    - `max_steps`: cap on solver steps; reaching it is the status "max_steps".
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

    def save_times(self) -> np.ndarray:
        """0 followed by `saves − 1` times up to t_max (log- or linearly spaced)."""
        if self.spacing == "linear":
            return np.linspace(0.0, self.t_max, self.saves)
        first = self.t_first if self.t_first is not None else min(1e-2, self.t_max * 1e-8)
        return np.concatenate([[0.0], np.geomspace(first, self.t_max, self.saves - 1)])


def vector_field(t, params, args):
    """−∇R at the trainable leaves `params` (the rest of the model is in `args`)."""
    static, problem, _ = args
    return jax.tree.map(jnp.negative, obs.risk_gradient(eqx.combine(params, static), problem))


def _observe(observables, params, args):
    static, problem, initial = args
    model = eqx.combine(params, static)
    return {o.name: o(model, problem, initial) for o in observables}


def _diffeqsolve(params, static, problem, initial, t0, t1, saveat, stop, options: FlowOptions):
    """The one call to `diffrax.diffeqsolve` (plain clock), shared by every entry point."""

    def converged(t, y, args, **kwargs):
        static, problem, _ = args
        return problem.excess_risk(end_to_end(eqx.combine(y, static))) < stop

    return diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        SOLVERS[options.solver](),
        t0=t0,
        t1=t1,
        dt0=None,
        y0=params,
        args=(static, problem, initial),
        saveat=saveat,
        stepsize_controller=diffrax.PIDController(rtol=options.rtol, atol=options.atol),
        event=diffrax.Event(converged),
        max_steps=options.max_steps,
        throw=False,
    )


@eqx.filter_jit
def _integrate(params, static, problem, initial, ts, stop, options: FlowOptions, observables):
    save = lambda t, y, args: _observe(observables, y, args)  # noqa: E731
    saveat = diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(ts=ts, fn=save),
            diffrax.SubSaveAt(t1=True, fn=save),
            diffrax.SubSaveAt(t1=True),
        ]
    )
    return _diffeqsolve(params, static, problem, initial, ts[0], ts[-1], saveat, stop, options)


class DenseSolution(eqx.Module):
    """A solve with dense output: the network at any time in [0, t_final]."""

    solution: diffrax.Solution
    static: DeepLinear

    def model_at(self, t) -> DeepLinear:
        """W(t), from the solver's own interpolant (accurate to its tolerance)."""
        return eqx.combine(self.solution.evaluate(t), self.static)


@eqx.filter_jit
def _integrate_dense(params, static, problem, initial, t_max, stop, options):
    saveat = diffrax.SaveAt(t1=True, dense=True)
    return _diffeqsolve(params, static, problem, initial, 0.0, t_max, saveat, stop, options)


def dense_solution(model: DeepLinear, problem: Problem, options: FlowOptions = FlowOptions()) -> DenseSolution:
    """Integrate like [`solve`][] but keep the dense interpolant instead of observables.

    For independent checks (the energy identity as an integral) and for evaluating the
    weights at times chosen after the solve.
    """
    _check_compatible(model, problem)
    params, static = eqx.partition(model, trainable(model))
    sol = _integrate_dense(params, static, problem, model, options.t_max, options.stop_at_excess_risk, options)
    return DenseSolution(sol, static)


def _status(result, final_values: dict) -> str:
    finite = all(np.all(np.isfinite(v)) for k, v in final_values.items() if k != "test_risk")
    if not finite:
        return "non_finite"
    if result == diffrax.RESULTS.event_occurred:
        return "converged"
    if result == diffrax.RESULTS.successful:
        return "reached_t_max"
    if result == diffrax.RESULTS.max_steps_reached:
        return "max_steps"
    return "solver_failed"


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
    from . import trajectory

    _check_compatible(model, problem)
    observables = obs.get(observables)
    params, static = eqx.partition(model, trainable(model))
    ts = jnp.asarray(options.save_times())
    start = _time.perf_counter()
    sol = _integrate(params, static, problem, model, ts, options.stop_at_excess_risk, options, observables)
    jax.block_until_ready(sol.ys)
    wall = _time.perf_counter() - start
    at_ts, at_end, final_params = (jax.tree.map(np.asarray, s) for s in sol.ys)
    t_saved = np.asarray(sol.ts[0])
    t_end = float(np.asarray(sol.ts[1])[0])
    keep = np.isfinite(t_saved) & (t_saved <= t_end)
    times = t_saved[keep]
    values = {k: v[keep] for k, v in at_ts.items()}
    if not np.isfinite(t_end) or t_end > times[-1]:
        times = np.append(times, t_end)
        values = {k: np.concatenate([values[k], at_end[k]]) for k in values}
    final = eqx.combine(jax.tree.map(lambda x: jnp.asarray(x[0]), final_params), static)
    status = _status(sol.result, {k: v[-1] for k, v in values.items()})
    info = dict(
        status=status,
        t_final=t_end,
        num_steps=int(sol.stats["num_steps"]),
        num_accepted_steps=int(sol.stats["num_accepted_steps"]),
        num_rejected_steps=int(sol.stats["num_rejected_steps"]),
        wall_time_s=wall,
        method="gradient_flow",
        clock="plain",
    )
    return trajectory.build(
        times, values, observables, model, final, problem, options=options, info=info
    )


def _check_compatible(model: DeepLinear, problem: Problem):
    from .models import ShapeError

    if model.widths[0] != problem.d:
        raise ShapeError(
            f"the network takes inputs of size {model.widths[0]} but the data has d = {problem.d}."
        )
