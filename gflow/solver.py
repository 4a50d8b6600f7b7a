"""The Diffrax machinery every clock shares: solvers, numerics, save points, status.

`gflow.flow` (ordinary time) and `gflow.clock` (the arc-length clock of long plateaus)
both integrate through the functions here, so a solve is configured, saved, trimmed and
judged in one way whatever its clock. Which flow is integrated (gradient flow, the
modified or the central flow) is a `dynamics` module (`gflow.dynamics`, `gflow.central`):
its vector field, its records and its events.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from . import compilation, continued, observables as obs
from .compilation import trace_once
from .dynamics import GradientFlow
from .models import end_to_end
from .stabilized import RKC2

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
    "rkc2": RKC2,
}
"""Adaptive solvers by name. For stiff flows: "rkc2", explicit with as many stages per step
as stability needs (`gflow.stabilized`; gradient and modified flows), and the kvaerno*,
implicit (a dense Jacobian per step: small networks)."""

STIFF_SOLVERS = tuple(name for name, cls in SOLVERS.items() if issubclass(cls, (diffrax.AbstractImplicitSolver, RKC2)))
"""Solvers whose steps are not held near h·S ~ 3 on a stiff flow: the implicit ones, and RKC2,
which adds stages as h·S grows."""

STATUSES = ("converged", "reached_t_max", "max_steps", "non_finite", "solver_failed")


class Numerics(eqx.Module):
    """What a compiled solve depends on: the solver and step cap (static), the tolerances
    (traced). Runs that differ in t_max, saves, clock or tolerances share one compilation.
    `stop_grad_norm_sq` is the stopping tolerance of a network with an activation (see
    [`diffeqsolve`][])."""

    solver: str = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    rtol: jax.Array
    atol: jax.Array
    stop_grad_norm_sq: jax.Array


def numerics(options, loosen: float = 1.0) -> Numerics:
    """The numerics of a `FlowOptions`; `loosen` > 1 relaxes rtol towards 1e-5 (and atol
    alike) for a first pass that only locates the end of a phase."""
    rtol = max(options.rtol, min(options.rtol * loosen, 1e-5))
    atol = options.atol * rtol / options.rtol
    return Numerics(options.solver, int(options.max_steps), jnp.asarray(float(rtol)), jnp.asarray(float(atol)),
                    jnp.asarray(float(options.stop_at_grad_norm_sq)))


ENERGY = "energy_dissipated"
"""Name of the extra state E(t) = ∫₀ᵗ ‖∇R‖² ds integrated with the flow (theory.md §8): the
energy identity R(0) − R(t) = E(t) is then checkable at every save to solver tolerance."""


STEPS = "solver_steps"
"""Name of the record of accepted solver steps taken up to each save (tolerances that are
budgets per step are applied per save interval with it)."""


GRADIENT_FLOW = GradientFlow()
"""The default dynamics: dW/dt = −∇R at the trainable leaves W, dE/dt = ‖∇R‖²."""

vector_field = GRADIENT_FLOW.field
"""Gradient flow's vector field on the state y = (W, E) (the rest of the model in `args`)."""


def initial_state(params):
    """(W(0), E(0) = 0)."""
    return params, jnp.zeros((), jax.tree.leaves(params)[0].dtype)


def observe(observables, params, args) -> dict:
    """The observables at the trainable leaves `params`; `args = (static, problem, initial)`."""
    static, problem, initial = args
    model = eqx.combine(params, static)
    return {o.name: o(model, problem, initial) for o in observables}


def record(observables, y, args, dynamics=GRADIENT_FLOW) -> dict:
    """What a save holds: the observables at the state y = (W, E), E itself, and the
    records of the dynamics."""
    return {**observe(observables, y[0], args), ENERGY: y[1], **dynamics.records(y, args)}


def diffeqsolve(y0, static, problem, initial, t0, t1, saveat, stop, options: Numerics, dynamics=GRADIENT_FLOW):
    """The one call to `diffrax.diffeqsolve` in ordinary time, shared by every entry point:
    PID control on the state (W, E), and a terminating event once R − R_min < `stop` (a
    linear network) or ‖∇R‖² < `options.stop_grad_norm_sq` (a network with an activation,
    whose R_min is unknown). `dynamics` gives the vector field and further events (the
    central flow's entering and leaving the edge, located by a root find). The first step
    is the dynamics' own `dt0`, or Diffrax's choice."""

    def converged(t, y, args, **kwargs):
        static, problem, _ = args
        model = eqx.combine(y[0], static)
        if model.is_linear:
            return problem.excess_risk(end_to_end(model)) < stop
        return obs.squared_norm(obs.risk_gradient(model, problem)) < options.stop_grad_norm_sq

    return diffrax.diffeqsolve(
        diffrax.ODETerm(trace_once(dynamics.field)),
        SOLVERS[options.solver](),
        t0=t0,
        t1=t1,
        dt0=dynamics.dt0,
        y0=y0,
        args=(static, problem, initial),
        saveat=saveat,
        stepsize_controller=Controller(rtol=options.rtol, atol=options.atol),
        event=_event(converged, dynamics.events()),
        max_steps=options.max_steps,
        throw=False,
    )


class Controller(diffrax.PIDController):
    """Diffrax's PID controller, with a trial step that overflowed rejected and shrunk by
    `factormin`, as Diffrax does for one whose error is merely infinite.

    Diffrax scales the error by max(|y0|, |y1|): an overflowed trial state (y1 = inf) gives
    inf/inf = NaN, then a NaN step size, after which every step is rejected until
    `max_steps` with t stuck. Here a non-finite y1 is replaced by y0 in the scale and a
    non-finite error counts as infinite. This matters on the first step: Diffrax's
    automatic one is 0.01 whatever the flow (diffrax 0.7.2 wraps the term before choosing
    it, so the Hairer–Wanner selection never runs), and a flow of sharpness S ≫ 300
    overflows there. Measured: a linear MLP of depth 8 at scale 0.6 (S = 1.1e3) never left
    t = 0 with Diffrax's controller."""

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        y1_candidate = jax.tree.map(lambda a, b: jnp.where(jnp.isfinite(b).all(), b, a), y0, y1_candidate)
        y_error = jax.tree.map(lambda e: jnp.where(jnp.isfinite(e), e, jnp.inf), y_error)
        return super().adapt_step_size(t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state)


def _event(converged, events: tuple) -> diffrax.Event:
    """Convergence, and the dynamics' own events: real-valued conditions that end the solve
    when they cross zero upwards, at the crossing found by [`EventBisection`][]. Each is
    traced once ([`trace_once`][]): Diffrax calls a condition at the start, twice in the
    loop body and in the root find, and the central flow's holds an eigensolver."""
    converged, *events = (_condition(c) for c in (converged, *events))
    if not events:
        return diffrax.Event(converged)
    return diffrax.Event((converged, *events), root_finder=EventBisection(rtol=1e-13, atol=1e-13),
                         direction=(None, *[True] * len(events)))


def _condition(fn):
    """The event condition `fn(t, y, args)` under [`trace_once`][], with the keyword
    arguments Diffrax passes (its terms, solver, …) dropped: none of gflow's reads them."""
    traced = trace_once(fn)
    return lambda t, y, args, **kwargs: traced(t, y, args)


class EventBisection(optx.Bisection):
    """Bisection on the time of the event that ended a step: no derivative of the
    conditions (Newton's Jacobian would differentiate the central flow's eigensolver,
    a third of its compile time).

    Diffrax hands the root finder the conditions (convergence, *events*) at once, each
    zero unless it triggered, a triggered boolean (convergence) as its distance t_end − t
    to the end of the step. The triggered real-valued ones rise through zero (direction
    True); so does the sum of theirs minus that distance, the scalar bisected here."""

    flip: bool = False

    @staticmethod
    def _scalar(fn):
        def scalar(t, args):
            (converged, *events), aux = fn(t, args)
            return sum(events) - converged, aux

        return scalar

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        scalar = jax.ShapeDtypeStruct((), jax.tree.leaves(f_struct)[0].dtype)
        return super().init(self._scalar(fn), y, args, options, scalar, aux_struct, tags)

    def step(self, fn, y, args, options, state, tags):
        return super().step(self._scalar(fn), y, args, options, state, tags)

    def terminate(self, fn, y, args, options, state, tags):
        return super().terminate(self._scalar(fn), y, args, options, state, tags)

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return super().postprocess(self._scalar(fn), y, aux, args, options, state, tags, result)


@compilation.exported
@eqx.filter_jit
def integrate(y0, static, problem, initial, ts, stop, options: Numerics, observables, t0=None, t1=None,
              dynamics=GRADIENT_FLOW, dense: bool = False):
    """Ordinary-time solve of the state y0 = (W, E) over [t0, t1] (default [ts[0], ts[-1]]),
    with the observables, E and the dynamics' records at `ts` and t1 (save times outside
    [t0, t1] are moved to its ends: `trim` then keeps one of each); with `dense`, also the
    solver's interpolant (`sol.evaluate`)."""
    t0 = ts[0] if t0 is None else t0
    t1 = ts[-1] if t1 is None else t1
    # An observable that continues from the previous save (Lanczos from the last eigenvector)
    # needs the saved weights. Then, and for dynamics with records (the modified and central
    # flows'), the solve saves its state y only and what a save holds is computed after it
    # (`continued.along`): compiled once instead of at every place Diffrax saves.
    plain, warm = continued.split(observables)
    after = bool(warm) or bool(dynamics.RECORDS)

    def save(t, y, args):
        return y if after else record(observables, y, args, dynamics)

    sol = diffeqsolve(y0, static, problem, initial, t0, t1, save_points(jnp.clip(ts, t0, t1), save, dense), stop,
                      options, dynamics)
    if not after:
        return sol
    args = (static, problem, initial)
    saved = continued.along(warm, sol.ys[0], static, problem, lambda y: record(plain, y, args, dynamics))
    return eqx.tree_at(lambda s: s.ys, sol, (saved, *sol.ys[1:]))


def as_save_times(times) -> jax.Array:
    """Save times as they enter a compiled solve: a float64 array that is never weakly typed,
    however it was built. A weak-typed grid (`jnp.full(n, jnp.asarray(t))`) is another input
    type to JAX than a NumPy-built one: two solves that should share a program would each be
    traced and compiled (the two passes of an arc-length phase were, until this was used)."""
    return jnp.asarray(times, jnp.float64)


def save_points(grid, save, dense: bool = False) -> diffrax.SaveAt:
    """`save(t, y, args)` at the times `grid` and at the end (one sub, so the observables
    are traced and compiled once), the final state itself, and the time of every accepted
    step (for [`steps_before`][]: how many steps each save interval took); with `dense`,
    the interpolant too."""
    return diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(ts=grid, t1=True, fn=trace_once(save)),
            diffrax.SubSaveAt(t1=True),
            diffrax.SubSaveAt(steps=True, fn=lambda t, y, args: None),
        ],
        dense=dense,
    )


def end_time(sol) -> float:
    """The time a solve of [`integrate`][] ended (its save at t1: an event's time when one
    ended it, where Diffrax's `sol.t1` stays the requested end)."""
    return float(np.asarray(sol.ts[1])[0])


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
