"""The arc-length clock: gradient flow across plateaus of any length.

From a tiny initialization GF sits on a plateau near 0 for a time t* that can exceed 1e100,
then escapes in a window far shorter than t*·1e-16: no float64 clock t resolves it. This
clock follows the same path with another clock on the plateau (see [`plateau_field`][]) and
switches back to ordinary time, measured from the switch, once the escape is under way
(theory.md §4, numerics). `gflow.flow.FlowOptions.clock` chooses it.
"""

from __future__ import annotations

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from . import compilation, observables as obs, solver
from .compilation import trace_once
from .models import DeepLinear, trainable
from .problem import Problem

AUTO_PLATEAU_TIME = 1e8
"""`clock="auto"` picks "arclength" when ‖W(0)‖/‖∇R(W(0))‖ exceeds this (see [`plateau_time`][])."""

PASS1_LOOSEN = 1e3
"""The first pass of each phase (which only places the save points) runs at rtol·1e3
(at most 1e-5)."""

ARC_MAX = 1e6
"""Bound on the arc length of the reparametrized phase (a safeguard; never reached in practice)."""


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
    """Gradient flow in the clock σ = log(1 + t/t_c) + (arc length), state y = ((W, E), u).

    With u = log(1 + t/t_c) carried for the time and q = (t + t_c)‖∇R‖,

        dW/dσ = −(∇R/‖∇R‖) · q/(1 + q),   dE/dσ = ‖∇R‖ · q/(1 + q),   du/dσ = 1/(1 + q),

    which is dW/dt = −∇R, dE/dt = ‖∇R‖² with dσ/dt = 1/(t + t_c) + ‖∇R‖. On a plateau (q ≪ 1) σ is log t,
    so the solver takes steps of decades; in the escape (q ≫ 1) σ is arc length in
    parameter space, so the motion has unit speed however short it is in t. The time
    t = t_c·expm1(u) is exact to the solver's tolerance on u (relative, in t). Everything
    is formed from ∇R/max|∇R| and log q, so ‖∇R‖ ~ 1e-170 neither underflows nor divides
    by zero. `args = (static, problem, initial, log t_c)`.
    """
    (params, _), u = y
    static, problem, _, log_tc = args
    unit, log_g = _direction(obs.risk_gradient(eqx.combine(params, static), problem))
    log_q = log_tc + u + log_g
    move = jax.nn.sigmoid(log_q)
    energy = jnp.exp(log_g + jax.nn.log_sigmoid(log_q))
    return (jax.tree.map(lambda x: -move * x, unit), energy), jax.nn.sigmoid(-log_q)


@compilation.exported
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


_suboptimality = compilation.exported(eqx.filter_jit(obs.suboptimality))


@compilation.exported
@eqx.filter_jit
def integrate_plateau(y0, static, problem, initial, grid, clock, stop, options: solver.Numerics, observables):
    """Phase 1 of the "arclength" clock: σ from 0 until the switch, t_max, or failure.

    `clock = (log t_c, u_max, σ_max, excess risk at which to switch)`. The switch happens at
    the end of the step on which R − R_min (R itself for a network with an activation:
    `gflow.observables.suboptimality`) falls below its threshold (where exactly does not
    matter: both clocks follow the same path); the horizon t = t_max is located exactly by a
    root find on the dense output. Saves at σ = `grid` and at the end; `y0 = (W, E)`.
    """
    log_tc, u_max, s_max, e_switch = clock

    def switched(t, y, args, **kwargs):
        return obs.suboptimality(eqx.combine(y[0][0], static), problem) <= jnp.maximum(e_switch, stop)

    def horizon(t, y, args, **kwargs):
        return y[1] - u_max

    saveat = solver.save_points(grid, lambda s, y, args: (solver.record(observables, y[0], args[:3]), y[1]))
    return diffrax.diffeqsolve(
        diffrax.ODETerm(trace_once(plateau_field)),
        solver.SOLVERS[options.solver](),
        t0=0.0,
        t1=s_max,
        dt0=None,
        y0=(y0, jnp.zeros((), _dtype(y0))),
        args=(static, problem, initial, log_tc),
        saveat=saveat,
        stepsize_controller=solver.Controller(rtol=options.rtol, atol=options.atol, norm=_clock_norm),
        event=diffrax.Event(
            (switched, horizon),
            root_finder=optx.Newton(rtol=1e-12, atol=1e-12),
            direction=(None, True),
        ),
        max_steps=options.max_steps,
        throw=False,
    )


def _clock_norm(err):
    """Error norm of ((W, E), u): RMS over the weights and E, but the time u on its own (in
    an RMS over all entries its error would weigh 1/(P + 2) and the carried t would be the
    least accurate part of the solution)."""
    state, u = err
    return jnp.maximum(optx.rms_norm(state), jnp.abs(u))


def _dtype(params):
    return jax.tree.leaves(params)[0].dtype


def _log1p_ratio(t: float, t_c: float) -> float:
    """log(1 + t/t_c) without overflow of t/t_c."""
    return math.log(t) - math.log(t_c) + math.log1p(t_c / t)


def _first(x):
    """The first (only) save of a `SubSaveAt(t1=True)`, as a float or array."""
    return np.asarray(x)[0]


def _save_grid(first, n1: int) -> np.ndarray:
    """Save points in σ for phase 1, from its first pass: half evenly in σ ≈ log(1 + t/t_c)
    over the plateau, half along the arc of the escape, σ ∈ [u_end, s_end]."""
    s_end = float(_first(first.ts[1]))
    u_end = float(_first(first.ys[1][1]))
    escaped = bool(first.result == diffrax.RESULTS.event_occurred) and bool(np.asarray(first.event_mask[0]))
    n_arc = n1 // 2 if escaped and np.isfinite(s_end) else 0
    if not (np.isfinite(s_end) and s_end > 0):
        return np.zeros(n1)
    u_part = min(max(u_end, 0.0), s_end) if n_arc else s_end
    return np.concatenate(
        [np.linspace(0.0, u_part, n1 - n_arc, endpoint=n_arc == 0), np.linspace(u_part, s_end, n_arc)]
    )


def _phase1_status(sol, last: dict) -> str:
    """"switched" when the escape happened; else why phase 1 ended."""
    if sol.result == diffrax.RESULTS.event_occurred and bool(np.asarray(sol.event_mask[0])):
        status = "switched"
    elif sol.result == diffrax.RESULTS.event_occurred:
        status = "reached_t_max"
    else:
        status = solver.status(sol.result, last)
        if status == "reached_t_max":  # σ_max reached before t_max or the escape
            status = "solver_failed"
    if not all(np.all(np.isfinite(v)) for k, v in last.items() if k != "test_risk"):
        status = "non_finite"
    return status


def _phase2(final, static, problem, model, horizon, n2, stop, numerics, observables):
    """Ordinary time τ = t − t_switch from the switch, in two passes (the first finds the end,
    the second saves log-spaced up to it). Returns (τ saves, values, final, status, stats,
    τ_end, first-pass steps)."""
    h, zero = jnp.asarray(horizon), jnp.asarray(0.0)
    past_the_end = solver.as_save_times(np.full(n2, horizon))
    first = solver.integrate(final, static, problem, model, past_the_end, stop, numerics, observables, zero, h)
    t_end = solver.end_time(first)
    if not (np.isfinite(t_end) and t_end > 0):
        t_end = horizon
    ts = solver.as_save_times(np.geomspace(t_end * 1e-4, t_end, n2) if n2 > 1 else [t_end])
    sol = solver.integrate(final, static, problem, model, ts, stop, numerics, observables, zero, h)
    saved, final2 = (jax.tree.map(np.asarray, y) for y in sol.ys[:2])
    times, values = solver.trim(np.asarray(sol.ts[0]), saved)
    values[solver.STEPS] = solver.steps_before(sol.ts[2], times)
    final = jax.tree.map(lambda x: jnp.asarray(x[0]), final2)
    status = solver.status(sol.result, {k: v[-1] for k, v in values.items()})
    return times, values, final, status, solver.stats(sol), solver.end_time(sol), int(first.stats["num_steps"])


def solve_arclength(y0, static, problem, model, options, observables):
    """Both phases of the arc-length clock, each in two passes: the first only finds where
    the phase ends, so that the second can place its save points on the path it travels.

    Returns (t_offset, t_local, values, final state (W, E), status, info).
    """
    t_c = options.first_time()
    numerics, rough = solver.numerics(options), solver.numerics(options, PASS1_LOOSEN)
    u_max = _log1p_ratio(options.t_max, t_c)
    e0 = float(_suboptimality(model, problem))
    clock = tuple(jnp.asarray(v) for v in (math.log(t_c), u_max, u_max + ARC_MAX, options.switch_at * e0))
    stop = jnp.asarray(options.stop_at_excess_risk)
    n1 = max(2, options.saves // 2)
    n2 = max(1, options.saves - n1)

    # Phase 1, pass 1 (looser tolerance): where is the switch? Every save point lies at
    # σ_max, past the end, so nothing is recorded (the same compiled solve as pass 2).
    past_the_end = solver.as_save_times(np.full(n1, float(clock[2])))
    first = integrate_plateau(y0, static, problem, model, past_the_end, clock, stop, rough, observables)
    grid = _save_grid(first, n1)
    # Phase 1, pass 2 (the run itself, at the requested tolerance): record on the grid.
    sol1 = integrate_plateau(y0, static, problem, model, solver.as_save_times(grid), clock, stop, numerics, observables)
    (obs_saved, u_saved), (final1, u_fin) = (jax.tree.map(np.asarray, y) for y in sol1.ys[:2])
    sigma, saved = solver.trim(np.asarray(sol1.ts[0]), {"obs": obs_saved, "u": u_saved})
    t_local, values = t_c * np.expm1(saved["u"]), saved["obs"]
    values[solver.STEPS] = solver.steps_before(sol1.ts[2], sigma)
    t_offset = np.zeros_like(t_local)
    final = jax.tree.map(lambda x: jnp.asarray(x[0]), final1)
    u_switch = float(u_fin[0])
    t_switch = t_c * math.expm1(u_switch) if u_switch < 709 else math.inf
    stats1 = solver.stats(sol1)
    info = dict(clock="arclength", clock_time_scale=t_c, arc_length=float(_first(sol1.ts[1])) - u_switch,
                num_steps_arclength=stats1["num_steps"], first_pass_steps=int(first.stats["num_steps"]))
    status = _phase1_status(sol1, {k: v[-1] for k, v in values.items()})
    horizon = options.t_max - t_switch
    if status == "switched" and not horizon > 0:
        status = "reached_t_max"
    stats2 = dict.fromkeys(stats1, 0)
    switched = status == "switched"
    t_end_local = float(t_local[-1])
    if switched:
        times2, values2, final, status, stats2, t_end_local, pass1 = _phase2(
            final, static, problem, model, horizon, n2, stop, numerics, observables
        )
        values2[solver.STEPS] += stats1["num_accepted_steps"]
        values = {k: np.concatenate([values[k], values2[k]]) for k in values}
        t_local = np.concatenate([t_local, times2])
        t_offset = np.concatenate([t_offset, np.full(times2.shape, t_switch)])
        info["first_pass_steps"] += pass1
    info.update(
        t_switch=t_switch if switched else math.nan,
        t_final=t_switch + t_end_local if switched else t_end_local,
        t_final_local=t_end_local,
        num_steps_plain=stats2["num_steps"],
        **{k: stats1[k] + stats2[k] for k in stats1},
    )
    return t_offset, t_local, values, final, status, info
