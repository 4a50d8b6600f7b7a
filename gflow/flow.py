"""Gradient flow dW_k/dt = −∂R/∂W_k integrated by `diffrax.diffeqsolve`.

An adaptive solver with a PID step-size controller follows the exact ODE; observables are
computed inside the compiled solve at every save time (`SaveAt(fn=...)`), and a terminating
event stops the solve once the excess risk is below a threshold. Failure is a recorded
status, never an exception.

From a tiny initialization GF sits on a plateau near 0 for a time t* that can exceed 1e100,
then escapes in a window far shorter than t*·1e-16: no float64 clock t resolves it. The
"arclength" clock follows the same path with another clock on the plateau (see
[`plateau_field`][]) and switches back to ordinary time, measured from the switch, once the
escape is over. [`FlowOptions`][] `clock` chooses.
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
import optimistix as optx

from . import observables as obs, trajectory
from .models import DeepLinear, check_input_width, end_to_end, trainable
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

CLOCKS = ("auto", "plain", "arclength")

AUTO_PLATEAU_TIME = 1e8
"""`clock="auto"` picks "arclength" when ‖W(0)‖/‖∇R(W(0))‖ exceeds this (see [`plateau_time`][])."""

PASS1_LOOSEN = 1e3
"""The first pass of each phase of the "arclength" clock (which only places the save points)
runs at rtol·1e3 (at most 1e-5)."""

ARC_MAX = 1e6
"""Bound on the arc length of the reparametrized phase (a safeguard; never reached in practice)."""


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


def vector_field(t, params, args):
    """−∇R at the trainable leaves `params` (the rest of the model is in `args`)."""
    static, problem, _ = args
    return jax.tree.map(jnp.negative, obs.risk_gradient(eqx.combine(params, static), problem))


def _observe(observables, params, args):
    static, problem, initial = args
    model = eqx.combine(params, static)
    return {o.name: o(model, problem, initial) for o in observables}


def _diffeqsolve(params, static, problem, initial, t0, t1, saveat, stop, options: _Numerics):
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
def _integrate(params, static, problem, initial, ts, stop, options: _Numerics, observables, t0=None, t1=None):
    """Plain-clock solve over [t0, t1] (default [ts[0], ts[-1]]), observables at `ts` and t1."""
    t0 = ts[0] if t0 is None else t0
    t1 = ts[-1] if t1 is None else t1
    saveat = _saveat(ts, lambda t, y, args: _observe(observables, y, args))
    return _diffeqsolve(params, static, problem, initial, t0, t1, saveat, stop, options)


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
    check_input_width(model, problem.d)
    params, static = eqx.partition(model, trainable(model))
    sol = _integrate_dense(
        params, static, problem, model, jnp.asarray(options.t_max), jnp.asarray(options.stop_at_excess_risk), _numerics(options)
    )
    return DenseSolution(sol, static)


# --- the reparametrized clock ------------------------------------------------------------


def _direction(tree):
    """(tree/‖tree‖, log‖tree‖), scaled by the largest entry first: no under- or overflow.

    An all-zero tree gives (0, −inf).
    """
    m = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree.leaves(tree)]))
    safe = jnp.where(m > 0, m, 1.0)
    scaled = jax.tree.map(lambda x: x / safe, tree)
    r = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(scaled)))  # in [1, √P] or 0
    unit = jax.tree.map(lambda x: x / jnp.where(r > 0, r, 1.0), scaled)
    return unit, jnp.where(m > 0, jnp.log(safe) + jnp.log(r), -jnp.inf)


def plateau_field(s, y, args):
    """Gradient flow in the clock σ = log(1 + t/t_c) + (arc length), state y = (W, u).

    With u = log(1 + t/t_c) carried for the time and q = (t + t_c)‖∇R‖,

        dW/dσ = −(∇R/‖∇R‖) · q/(1 + q),        du/dσ = 1/(1 + q),

    which is dW/dt = −∇R with dσ/dt = 1/(t + t_c) + ‖∇R‖. On a plateau (q ≪ 1) σ is log t,
    so the solver takes steps of decades; in the escape (q ≫ 1) σ is arc length in
    parameter space, so the motion has unit speed however short it is in t. The time
    t = t_c·expm1(u) is exact to the solver's tolerance on u (relative, in t). Everything
    is formed from ∇R/max|∇R| and log q, so ‖∇R‖ ~ 1e-170 neither underflows nor divides
    by zero. `args = (static, problem, initial, log t_c)`.
    """
    params, u = y
    static, problem, _, log_tc = args
    unit, log_g = _direction(obs.risk_gradient(eqx.combine(params, static), problem))
    log_q = log_tc + u + log_g
    move = jax.nn.sigmoid(log_q)
    return jax.tree.map(lambda x: -move * x, unit), jax.nn.sigmoid(-log_q)


@eqx.filter_jit
def plateau_time(model: DeepLinear, problem: Problem):
    """log10(‖W(0)‖/‖∇R(W(0))‖): the time the trainable weights need to move by their own
    norm at their initial speed (the criterion of `clock="auto"`).

    From a small-scale init of entries ~s the plateau lasts ~s^{−(L−2)}, and so does this
    ratio; for residual or moderate inits it is O(1). Computed in logs (+inf at a critical
    point).
    """
    params = eqx.filter(model, trainable(model))
    return (
        0.5 * (obs.squared_norm(params, log=True) - obs.squared_norm(obs.risk_gradient(model, problem), log=True))
    ) / jnp.log(10.0)


_excess_risk = eqx.filter_jit(obs.excess_risk)


@eqx.filter_jit
def _integrate_plateau(params, static, problem, initial, grid, clock, stop, options: _Numerics, observables):
    """Phase 1 of the "arclength" clock: σ from 0 until the switch, t_max, or failure.

    `clock = (log t_c, u_max, σ_max, excess risk at which to switch)`. The switch happens at
    the end of the step on which R − R_min falls below its threshold (where exactly does not
    matter: both clocks follow the same path); the horizon t = t_max is located exactly by a
    root find on the dense output. Saves at σ = `grid` and at the end.
    """
    log_tc, u_max, s_max, e_switch = clock

    def switched(t, y, args, **kwargs):
        return problem.excess_risk(end_to_end(eqx.combine(y[0], static))) <= jnp.maximum(e_switch, stop)

    def horizon(t, y, args, **kwargs):
        return y[1] - u_max

    saveat = _saveat(grid, lambda s, y, args: (_observe(observables, y[0], args[:3]), y[1]))
    return diffrax.diffeqsolve(
        diffrax.ODETerm(plateau_field),
        SOLVERS[options.solver](),
        t0=0.0,
        t1=s_max,
        dt0=None,
        y0=(params, jnp.zeros((), _dtype(params))),
        args=(static, problem, initial, log_tc),
        saveat=saveat,
        stepsize_controller=diffrax.PIDController(rtol=options.rtol, atol=options.atol, norm=_clock_norm),
        event=diffrax.Event(
            (switched, horizon),
            root_finder=optx.Newton(rtol=1e-12, atol=1e-12),
            direction=(None, True),
        ),
        max_steps=options.max_steps,
        throw=False,
    )


def _clock_norm(err):
    """Error norm of (W, u): RMS over the weights, but the time u on its own (in an RMS over
    all entries its error would weigh 1/(P + 1) and the carried t would be the least
    accurate part of the solution)."""
    params, u = err
    return jnp.maximum(optx.rms_norm(params), jnp.abs(u))


def _dtype(params):
    return jax.tree.leaves(params)[0].dtype


def _log1p_ratio(t: float, t_c: float) -> float:
    """log(1 + t/t_c) without overflow of t/t_c."""
    return math.log(t) - math.log(t_c) + math.log1p(t_c / t)


class _Numerics(eqx.Module):
    """What a compiled solve depends on: the solver and step cap (static), the tolerances
    (traced). Runs that differ in t_max, saves, clock or tolerances share one compilation."""

    solver: str = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    rtol: jax.Array
    atol: jax.Array


def _numerics(options: FlowOptions, loosen: float = 1.0) -> _Numerics:
    """The numerics of `options`; `loosen` > 1 relaxes rtol towards 1e-5 (and atol alike)
    for a first pass that only locates the end of a phase."""
    rtol = max(options.rtol, min(options.rtol * loosen, 1e-5))
    atol = options.atol * rtol / options.rtol
    return _Numerics(options.solver, int(options.max_steps), jnp.asarray(float(rtol)), jnp.asarray(float(atol)))


def _stats(sol) -> dict[str, int]:
    return {k: int(sol.stats[k]) for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")}


def _saveat(grid, save):
    """`save` at the times `grid` and at the end (one sub, so the observables are traced and
    compiled once), plus the final state itself."""
    return diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=grid, t1=True, fn=save), diffrax.SubSaveAt(t1=True)])


def _trim(t_saved, saved):
    """The saves of [`_saveat`][] that happened, in order.

    Diffrax writes the end of the solve right after the last save time reached and fills the
    slots after it with inf (issues 335, 387): keep the finite ones, and drop a save time
    equal to the end, which would repeat it.
    """
    keep = np.isfinite(t_saved)
    keep[:-1] &= ~(keep[1:] & (t_saved[:-1] == t_saved[1:]))
    return t_saved[keep], jax.tree.map(lambda v: v[keep], saved)


def _solve_arclength(params, static, problem, model, options: FlowOptions, observables):
    """Both phases of the "arclength" clock, each in two passes: the first only finds where
    the phase ends, so that the second can place its save points on the path it travels.

    Returns (t_offset, t_local, values, final params, status, info).
    """
    t_c = options.first_time()
    numerics, rough = _numerics(options), _numerics(options, PASS1_LOOSEN)
    e0 = float(_excess_risk(model, problem))
    clock = (
        jnp.asarray(math.log(t_c)),
        jnp.asarray(_log1p_ratio(options.t_max, t_c)),
        jnp.asarray(_log1p_ratio(options.t_max, t_c) + ARC_MAX),
        jnp.asarray(options.switch_at * e0),
    )
    stop = jnp.asarray(options.stop_at_excess_risk)
    n1 = max(2, options.saves // 2)
    n2 = max(1, options.saves - n1)

    # Phase 1, pass 1 (looser tolerance): where is the switch? Nothing is recorded: every
    # save point lies at σ_max, past the end (the same compiled solve as pass 2).
    first = _integrate_plateau(params, static, problem, model, jnp.full(n1, clock[2]), clock, stop, rough, observables)
    s_end = float(np.asarray(first.ts[1])[0])
    u_end = float(np.asarray(first.ys[1][1])[0])
    escaped = bool(first.result == diffrax.RESULTS.event_occurred) and bool(np.asarray(first.event_mask[0]))
    # Save points in σ: half evenly in σ ≈ log(1 + t/t_c) over the plateau, half along the
    # arc of the escape, σ ∈ [u_end, s_end] (arc length s_end − u_end).
    n_arc = n1 // 2 if escaped and np.isfinite(s_end) else 0
    if np.isfinite(s_end) and s_end > 0:
        u_part = min(max(u_end, 0.0), s_end) if n_arc else s_end
        grid = np.concatenate(
            [
                np.linspace(0.0, u_part, n1 - n_arc, endpoint=n_arc == 0),
                np.linspace(u_part, s_end, n_arc),
            ]
        )
    else:
        grid = np.zeros(n1)

    # Phase 1, pass 2 (the run itself, at the requested tolerance): record on the grid.
    sol1 = _integrate_plateau(params, static, problem, model, jnp.asarray(grid), clock, stop, numerics, observables)
    (obs_saved, u_saved), (final1, u_fin) = (jax.tree.map(np.asarray, y) for y in sol1.ys)
    s_fin = float(np.asarray(sol1.ts[1])[0])
    _, values = _trim(np.asarray(sol1.ts[0]), {"obs": obs_saved, "u": u_saved})
    t_local = t_c * np.expm1(values["u"])
    t_offset = np.zeros_like(t_local)
    values = values["obs"]
    final = jax.tree.map(lambda x: jnp.asarray(x[0]), final1)
    u_switch = float(u_fin[0])
    t_switch = t_c * math.expm1(u_switch) if u_switch < 709 else math.inf
    stats1 = _stats(sol1)
    info = dict(
        clock="arclength",
        clock_time_scale=t_c,
        arc_length=s_fin - u_switch,
        num_steps_arclength=stats1["num_steps"],
        first_pass_steps=int(first.stats["num_steps"]),
    )

    last = {k: v[-1] for k, v in values.items()}
    if sol1.result == diffrax.RESULTS.event_occurred and bool(np.asarray(sol1.event_mask[0])):
        status = "switched"
    elif sol1.result == diffrax.RESULTS.event_occurred:
        status = "reached_t_max"
    else:
        status = _status(sol1.result, last)
        if status == "reached_t_max":  # σ_max reached before t_max or the escape
            status = "solver_failed"
    if not all(np.all(np.isfinite(v)) for k, v in last.items() if k != "test_risk"):
        status = "non_finite"
    horizon = options.t_max - t_switch
    if status == "switched" and not horizon > 0:
        status = "reached_t_max"
    stats2 = dict.fromkeys(stats1, 0)
    switched = status == "switched"
    if switched:
        # Phase 2: ordinary time τ = t − t_switch from the switch, again in two passes.
        h = jnp.asarray(horizon)
        zero = jnp.asarray(0.0)
        first2 = _integrate(final, static, problem, model, jnp.full(n2, h), stop, numerics, observables, zero, h)
        t_end_local = float(np.asarray(first2.ts[1])[0])
        if not (np.isfinite(t_end_local) and t_end_local > 0):
            t_end_local = horizon
        ts2 = np.geomspace(t_end_local * 1e-4, t_end_local, n2) if n2 > 1 else np.array([t_end_local])
        sol2 = _integrate(final, static, problem, model, jnp.asarray(ts2), stop, numerics, observables, zero, h)
        saved, final2 = (jax.tree.map(np.asarray, y) for y in sol2.ys)
        t_end_local = float(np.asarray(sol2.ts[1])[0])
        times2, values2 = _trim(np.asarray(sol2.ts[0]), saved)
        values = {k: np.concatenate([values[k], values2[k]]) for k in values}
        t_local = np.concatenate([t_local, times2])
        t_offset = np.concatenate([t_offset, np.full(times2.shape, t_switch)])
        final = jax.tree.map(lambda x: jnp.asarray(x[0]), final2)
        status = _status(sol2.result, {k: v[-1] for k, v in values2.items()})
        stats2 = _stats(sol2)
        info["first_pass_steps"] += int(first2.stats["num_steps"])
    info.update(
        t_switch=t_switch if switched else math.nan,
        t_final=t_switch + t_end_local if switched else float(t_local[-1]),
        t_final_local=t_end_local if switched else float(t_local[-1]),
        num_steps_plain=stats2["num_steps"],
        **{k: stats1[k] + stats2[k] for k in stats1},
    )
    return t_offset, t_local, values, final, status, info



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
    check_input_width(model, problem.d)
    observables = obs.get(observables)
    params, static = eqx.partition(model, trainable(model))
    start = _time.perf_counter()
    log10_plateau = float(plateau_time(model, problem))
    clock = options.clock
    if clock == "auto":
        clock = "arclength" if log10_plateau > math.log10(AUTO_PLATEAU_TIME) else "plain"
    if clock == "arclength":
        t_offset, t_local, values, final_params, status, info = _solve_arclength(
            params, static, problem, model, options, observables
        )
        times = t_offset + t_local
    else:
        ts = jnp.asarray(options.save_times())
        stop = jnp.asarray(options.stop_at_excess_risk)
        sol = _integrate(params, static, problem, model, ts, stop, _numerics(options), observables)
        jax.block_until_ready(sol.ys)
        saved, final_params = (jax.tree.map(np.asarray, s) for s in sol.ys)
        t_end = float(np.asarray(sol.ts[1])[0])
        times, values = _trim(np.asarray(sol.ts[0]), saved)
        final_params = jax.tree.map(lambda x: jnp.asarray(x[0]), final_params)
        status = _status(sol.result, {k: v[-1] for k, v in values.items()})
        stats = _stats(sol)
        info = dict(
            clock="plain",
            t_final=t_end,
            t_switch=math.nan,
            t_final_local=t_end,
            num_steps_arclength=0,
            num_steps_plain=stats["num_steps"],
            **stats,
        )
        t_offset, t_local = np.zeros_like(times), times
    wall = _time.perf_counter() - start
    final = eqx.combine(final_params, static)
    info = dict(status=status, **info, wall_time_s=wall, method="gradient_flow", plateau_time_log10=log10_plateau)
    ds = trajectory.build(times, values, observables, model, final, problem, options=options, info=info)
    return ds.assign(
        t_offset=("time", t_offset, {"description": "absolute time = t_offset + t_local (t_switch after the switch)"}),
        t_local=("time", t_local, {"description": "time since t_offset, exact where t_offset + t_local rounds"}),
    )
