"""The Diffrax machinery every clock shares: solvers, numerics, save points, status.

`gflow.flow` (ordinary time) and `gflow.clock` (the arc-length clock of long plateaus)
both integrate through the functions here, so a solve is configured, saved, trimmed and
judged in one way whatever its clock.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import observables as obs
from .models import end_to_end

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


class Numerics(eqx.Module):
    """What a compiled solve depends on: the solver and step cap (static), the tolerances
    (traced). Runs that differ in t_max, saves, clock or tolerances share one compilation."""

    solver: str = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    rtol: jax.Array
    atol: jax.Array


def numerics(options, loosen: float = 1.0) -> Numerics:
    """The numerics of a `FlowOptions`; `loosen` > 1 relaxes rtol towards 1e-5 (and atol
    alike) for a first pass that only locates the end of a phase."""
    rtol = max(options.rtol, min(options.rtol * loosen, 1e-5))
    atol = options.atol * rtol / options.rtol
    return Numerics(options.solver, int(options.max_steps), jnp.asarray(float(rtol)), jnp.asarray(float(atol)))


ENERGY = "energy_dissipated"
"""Name of the extra state E(t) = ∫₀ᵗ ‖∇R‖² ds integrated with the flow (theory.md §8): the
energy identity R(0) − R(t) = E(t) is then checkable at every save to solver tolerance."""


STEPS = "solver_steps"
"""Name of the record of accepted solver steps taken up to each save (tolerances that are
budgets per step are applied per save interval with it)."""


def vector_field(t, y, args):
    """The flow on the state y = (W, E): dW/dt = −∇R at the trainable leaves W (the rest of
    the model is in `args`), and dE/dt = ‖∇R‖²."""
    params, _ = y
    static, problem, _ = args
    g = obs.risk_gradient(eqx.combine(params, static), problem)
    return jax.tree.map(jnp.negative, g), obs.squared_norm(g)


def initial_state(params):
    """(W(0), E(0) = 0)."""
    return params, jnp.zeros((), jax.tree.leaves(params)[0].dtype)


def observe(observables, params, args) -> dict:
    """The observables at the trainable leaves `params`; `args = (static, problem, initial)`."""
    static, problem, initial = args
    model = eqx.combine(params, static)
    return {o.name: o(model, problem, initial) for o in observables}


def record(observables, y, args) -> dict:
    """What a save holds: the observables at the state y = (W, E), and E itself."""
    return {**observe(observables, y[0], args), ENERGY: y[1]}


def diffeqsolve(y0, static, problem, initial, t0, t1, saveat, stop, options: Numerics):
    """The one call to `diffrax.diffeqsolve` in ordinary time, shared by every entry point:
    PID control on the state (W, E), and a terminating event once R − R_min < `stop`."""

    def converged(t, y, args, **kwargs):
        static, problem, _ = args
        return problem.excess_risk(end_to_end(eqx.combine(y[0], static))) < stop

    return diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        SOLVERS[options.solver](),
        t0=t0,
        t1=t1,
        dt0=None,
        y0=y0,
        args=(static, problem, initial),
        saveat=saveat,
        stepsize_controller=diffrax.PIDController(rtol=options.rtol, atol=options.atol),
        event=diffrax.Event(converged),
        max_steps=options.max_steps,
        throw=False,
    )


@eqx.filter_jit
def integrate(y0, static, problem, initial, ts, stop, options: Numerics, observables, t0=None, t1=None):
    """Ordinary-time solve of the state y0 = (W, E) over [t0, t1] (default [ts[0], ts[-1]]),
    with the observables and E at `ts` and t1."""
    t0 = ts[0] if t0 is None else t0
    t1 = ts[-1] if t1 is None else t1
    save = save_points(ts, lambda t, y, args: record(observables, y, args))
    return diffeqsolve(y0, static, problem, initial, t0, t1, save, stop, options)


def save_points(grid, save) -> diffrax.SaveAt:
    """`save(t, y, args)` at the times `grid` and at the end (one sub, so the observables
    are traced and compiled once), the final state itself, and the time of every accepted
    step (for [`steps_before`][]: how many steps each save interval took)."""
    return diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(ts=grid, t1=True, fn=save),
            diffrax.SubSaveAt(t1=True),
            diffrax.SubSaveAt(steps=True, fn=lambda t, y, args: None),
        ]
    )


def steps_before(step_times, save_times) -> np.ndarray:
    """Accepted steps that ended at or before each save time (from `save_points`' record
    of step times, in the solve's own clock)."""
    ends = np.sort(np.asarray(step_times)[np.isfinite(step_times)])
    return np.searchsorted(ends, np.asarray(save_times), side="right").astype(np.int64)


def trim(t_saved, saved):
    """The saves of [`save_points`][] that happened, in order.

    Diffrax writes the end of the solve right after the last save time reached and fills the
    slots after it with inf (issues 335, 387): keep the finite ones, and drop a save time
    equal to the end, which would repeat it.
    """
    keep = np.isfinite(t_saved)
    keep[:-1] &= ~(keep[1:] & (t_saved[:-1] == t_saved[1:]))
    return t_saved[keep], jax.tree.map(lambda v: v[keep], saved)


def stats(sol) -> dict[str, int]:
    """Step counts of a solve, as plain ints."""
    return {k: int(sol.stats[k]) for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")}


def status(result, final_values: dict) -> str:
    """One of `STATUSES` from a Diffrax result and the observables at the end."""
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
