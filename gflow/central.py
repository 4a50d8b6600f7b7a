"""The central flow: GD at the edge of stability, averaged over its oscillations, as an ODE
(Cohen, Damian et al., ICLR 2025; theory.md §11).

In time t = kη, with u_1, …, u_k the top Hessian eigenvectors,

    dw/dt = −∇R − ½Σ_ij X_ij ∇³R[u_i, u_j],

with X ⪰ 0 the solution of the complementarity problem of `gflow.complementarity`: X pushes
exactly on the eigenvalues that would rise past 2/η, and holds them there. Below the edge
X = 0 and the flow is GF. GD's risk averaged over its oscillations is predicted as
R + ½⟨X, UᵀHU⟩.

The integration is a hybrid system. A *phase* holds the top m eigenvalues at 2/η (m = 0:
GF) and integrates with X the linear solution of Y = 0 on them, which is the
complementarity solution while it is ⪰ 0. Two events end a phase, located by a root find
on one condition (the larger of the two, so that the solve traces one function): *enter*,
the (m + 1)-th eigenvalue reaches 2/η, and *leave*, X's smallest eigenvalue reaches 0
(that eigenvalue would fall below 2/η). At a boundary the complementarity
problem is solved exactly on the eigenvalues at the edge, and its rank is the next
phase's m. A drift term κ(2/η − λ_i), κ = RELAXATION/η, pulls the held eigenvalues back to
2/η against the solver's local errors.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import complementarity as cp, linalg, observables as obs, solver

RELAXATION = 1.0
"""κη: the held eigenvalues relax to 2/η at the rate κ = RELAXATION/η, one GD step's time.
No faster than the curvature 2/η itself, so it adds no stiffness."""

KRYLOV = 40
"""Vectors of the warm-started block Lanczos that finds the top eigenpairs at every
evaluation (machine precision on the paper's MLP from ~30)."""

MAX_PHASES = 64
"""Cap on the phases of one solve (entering and leaving the edge); past it the status is
"max_steps"."""

ACTIVE, TRACE, PREDICTED, SHARPNESS, SLOPE = (
    "edge_active", "edge_trace", "predicted_risk", "edge_sharpness", "edge_sharpness_slope")


class Edge(NamedTuple):
    """The central flow's quantities at one point (flat trainable parameters).

    - `risk`, `gradient`: R and ∇R.
    - `values`, `vectors`: the top k + 1 Hessian eigenpairs (descending; rows).
    - `D`: ∇³R[u_i, u_j] for the pairs i ≤ j of the top k (rows, pair order of
      `gflow.complementarity.pairs`).
    - `x`: X in pair coordinates (the drift term included).
    - `x_leave`: X with only the part of the drift term that pushes down (an eigenvalue
      above 2/η): what the *leave* event watches. Without the other part, the drift that
      the solver's errors cause at the edge cannot make the flow leave it.
    - `velocity`: dw/dt = −∇R − ½Σ X_ij D_ij.
    - `watcher_rate`: dλ_{m+1}/dt along `velocity` (the first eigenvalue not held).
    """

    risk: jax.Array
    gradient: jax.Array
    values: jax.Array
    vectors: jax.Array
    D: jax.Array
    x: jax.Array
    x_leave: jax.Array
    velocity: jax.Array
    watcher_rate: jax.Array


class CentralFlow(eqx.Module):
    """The central flow at step size η in one phase: `active` (m) top eigenvalues held at
    2/η, at most `edge` (k); `warm` (k + 1 rows) starts the eigensolver (the eigenvectors at
    the phase's start)."""

    step_size: jax.Array
    active: jax.Array
    warm: jax.Array
    edge: int = eqx.field(static=True)
    RECORDS: ClassVar[tuple] = (
        obs.Observable(ACTIVE, None, (), "how many Hessian eigenvalues the central flow holds at 2/η"),
        obs.Observable(TRACE, None, (), "tr X: the size of the oscillation the central flow averages over"),
        obs.Observable(PREDICTED, None, (), "R + ½⟨X, UᵀHU⟩: the central flow's prediction of GD's risk "
                       "averaged over its oscillations"),
        obs.Observable(SHARPNESS, None, (), "the top Hessian eigenvalue λ₁, from the central flow's eigensolver"),
        obs.Observable(SLOPE, None, (), "‖∇λ₁‖ = ‖∇³R[u₁, u₁]‖ (the scale of the edge check's tolerance)"),
    )

    def at(self, flat, f, events: bool = True) -> Edge:
        """The [`Edge`][] quantities at the flat point `flat` of the risk `f` (without
        `events`, those of the vector field only: `x_leave` and `watcher_rate` are None)."""
        eta, k = self.step_size, self.edge
        risk, g = jax.value_and_grad(f)(flat)
        values, vectors = linalg.top_hessian_eigenpairs(f, flat, self.warm, -(-KRYLOV // (k + 1)))
        i, j = cp.pairs(k)
        D = jax.vmap(lambda u, v: linalg.third_derivative(f, flat, u, v))(vectors[i], vectors[j])
        weights = jnp.asarray(cp.pair_weights(k))
        a = weights * (D @ g)
        drift = jnp.where(i == j, (RELAXATION / eta) * (2.0 / eta - values[i]), 0.0)
        active = jnp.arange(k) < self.active
        F = weights[:, None] * D
        x = cp.equality_solution(F, a + drift, active)
        velocity = -g - 0.5 * F.T @ x
        x_leave = rate = None
        if events:
            x_leave = cp.equality_solution(F, a + jnp.minimum(drift, 0.0), active)
            watcher = vectors[self.active]
            rate = linalg.third_derivative(f, flat, watcher, watcher) @ velocity
        return Edge(risk, g, values, vectors, D, x, x_leave, velocity, rate)

    def _edge(self, y, args, events: bool = True) -> tuple[Edge, callable]:
        params, _ = y
        static, problem, _ = args
        f, flat = obs.flat_risk(eqx.combine(params, static), problem)
        return self.at(flat, f, events), ravel_pytree(params)[1]

    def field(self, t, y, args):
        """dW/dt = −∇R − ½Σ X_ij D_ij; dE/dt = −⟨∇R, dW/dt⟩, so that R(0) − R(t) = E(t)."""
        e, unravel = self._edge(y, args, events=False)
        return unravel(e.velocity), -(e.gradient @ e.velocity)

    def records(self, y, args) -> dict:
        e, _ = self._edge(y, args, events=False)
        X = cp.from_pairs(e.x, self.edge)
        return {ACTIVE: self.active.astype(jnp.float64), TRACE: jnp.trace(X),
                PREDICTED: e.risk + 0.5 * jnp.diag(X) @ e.values[: self.edge],
                SHARPNESS: e.values[0], SLOPE: jnp.linalg.norm(e.D[0])}

    @property
    def dt0(self):
        """The first step: a tenth of a GD step (the controller takes it from there)."""
        return 0.1 * self.step_size

    def boundary_distance(self, e: Edge):
        """(enter, leave), each negative inside the phase and crossing 0 upwards at its event,
        in units of 2/η. enter: the next eigenvalue λ_{m+1} is at or past 2/η *and* rises
        faster than the drift term would let a held one, the smaller of (λ_{m+1} − 2/η)η/2
        and (dλ_{m+1}/dt − κ(2/η − λ_{m+1}))η²/2; it crosses 0 where λ_{m+1} reaches 2/η
        rising, or, above 2/η (a start past the edge), where GF stops lowering it fast enough;
        leave = −λ_min(X)·‖∇λ₁‖²η²/4 on the held block (X of `Edge.x_leave`), a held
        eigenvalue no longer pushed on: with one, ½σ²‖∇λ₁‖² is the rate at which GF would
        raise λ₁, and η·rate/(2/η) its rise per GD step (−1 in a phase that holds none)."""
        eta = self.step_size
        gap = 2.0 / eta - e.values[self.active]
        enter = jnp.minimum(-gap * eta / 2, (e.watcher_rate - RELAXATION / eta * gap) * eta**2 / 2)
        X = cp.from_pairs(e.x_leave, self.edge)
        low = cp.smallest_active_eigenvalue(X, jnp.arange(self.edge) < self.active)
        leave = jnp.where(self.active > 0, -low * jnp.sum(e.D[0] ** 2) * eta**2 / 4, -1.0)
        return enter, leave

    def boundary(self, t, y, args, **kwargs):
        """The phase's one event condition: the larger of [`boundary_distance`][]'s two."""
        return jnp.maximum(*self.boundary_distance(self._edge(y, args)[0]))

    def events(self) -> tuple:
        return (self.boundary,)


@eqx.filter_jit
def _edge_at(flow: CentralFlow, params, static, problem) -> tuple[Edge, tuple]:
    """The [`Edge`][] at W and the phase's distances to its two events."""
    f, flat = obs.flat_risk(eqx.combine(params, static), problem)
    e = flow.at(flat, f)
    return e, flow.boundary_distance(e)


def start(params, static, problem, step_size: float, edge: int) -> tuple[CentralFlow, CentralFlow | None]:
    """(The flow holding nothing, the first phase from W(0)): the eigenvalues at or above
    2/η, if any, are the candidates of the first phase (None when more than `edge` are)."""
    flat = ravel_pytree(params)[0]
    warm = jax.random.normal(jax.random.key(0), (edge + 1, flat.size), flat.dtype)
    flow = CentralFlow(jnp.asarray(step_size), jnp.asarray(0), warm, edge)
    e = _edge_at(flow, params, static, problem)[0]
    above = int(np.sum(np.asarray(e.values) >= 2.0 / step_size))
    flow = eqx.tree_at(lambda c: c.warm, flow, e.vectors)
    return flow, _held(flow, params, static, problem, above)


def _held(flow: CentralFlow, params, static, problem, candidates: int) -> CentralFlow | None:
    """The first phase: it holds what the complementarity problem, solved exactly on the top
    `candidates` eigenvalues (α with the drift term, which pushes on an eigenvalue above
    2/η), pushes on: its rank m (None: more than `flow.edge` candidates). Then, while X's linear solution on the top m is not ⪰ 0 (they are not the
    ones the solution pushes on), one fewer."""
    if candidates > flow.edge:
        return None
    e = _edge_at(flow, params, static, problem)[0]
    flow = eqx.tree_at(lambda c: c.warm, flow, e.vectors)
    m = 0
    if candidates:
        c = candidates
        D = np.asarray(cp.from_pairs(e.D, flow.edge))[:c, :c]  # (c, c, P)
        gap = 2.0 / flow.step_size - np.asarray(e.values[:c])  # < 0 above the edge: the drift term pushes
        alpha = np.einsum("ijp,p->ij", D, np.asarray(e.gradient)) + np.diag(RELAXATION / flow.step_size * gap)
        m = cp.rank(cp.solve(alpha, D))
    while m > 0:
        flow = eqx.tree_at(lambda c: c.active, flow, jnp.asarray(m))
        if float(_edge_at(flow, params, static, problem)[1][1]) < 0:
            break
        m -= 1
    return eqx.tree_at(lambda c: c.active, flow, jnp.asarray(m))


def _next(flow: CentralFlow, params, static, problem) -> CentralFlow | None:
    """The phase after `flow`'s event at W: one more eigenvalue held after *enter* (None:
    more than `flow.edge`), one fewer after *leave*. The complementarity problem is
    degenerate exactly at its boundary (the crossing eigenvalue has X = Y = 0 there), so
    the direction of the crossing decides, not its solution."""
    e, (enter, leave) = _edge_at(flow, params, static, problem)
    m = int(flow.active) + (1 if float(enter) >= float(leave) else -1)
    if m > flow.edge:
        return None
    return eqx.tree_at(lambda c: (c.warm, c.active), flow, (e.vectors, jnp.asarray(m)))


class Phase(NamedTuple):
    """One phase of a central-flow solve: its start and end times, the flow in force, and
    Diffrax's solution."""

    t0: float
    t1: float
    flow: CentralFlow
    solution: diffrax.Solution


def phases(y0, static, problem, integrate, step_size: float, edge: int):
    """Integrate the central flow at η = `step_size`, holding at most `edge` eigenvalues,
    phase after phase from y0 = (W, E), until convergence, t_max, a failure, or more
    eigenvalues at the edge. `integrate(y, t0, flow, t1=None)` runs one phase from time t0
    (to t1, default the horizon) and returns (its Diffrax solution, its final time, its
    final state).

    Returns (list of [`Phase`][], status: None when the last phase's solution says it).
    """
    plain, flow = start(y0[0], static, problem, step_size, edge)
    if flow is None:  # too many eigenvalues at or past 2/η already: the initial point only
        sol, t_end, _ = integrate(y0, 0.0, plain, 0.0)
        return [Phase(0.0, t_end, plain, sol)], "edge_limit"
    out, t0, y = [], 0.0, y0
    for _ in range(MAX_PHASES):
        sol, t_end, y_end = integrate(y, t0, flow)
        out.append(Phase(t0, t_end, flow, sol))
        if sol.result != diffrax.RESULTS.event_occurred:
            return out, None
        if not bool(np.asarray(sol.event_mask[1])):
            return out, None  # converged
        y, t0 = y_end, t_end
        flow = _next(flow, y[0], static, problem)
        if flow is None:
            return out, "edge_limit"
    return out, "max_steps"


def solve(y0, static, problem, model, options, observables, step_size: float, edge: int, dense: bool = False):
    """The central flow with observables at the save times of `options`, in phases (with
    `dense`, each phase's solution holds its interpolant).

    Returns what `gflow.clock.solve_arclength` returns, (t_offset, t_local, values, final
    state, status, info), and the list of [`Phase`][].
    """
    ts = np.asarray(options.save_times())
    stop = jnp.asarray(options.stop_at_excess_risk)
    numerics = solver.numerics(options)
    t_max = float(options.t_max)

    def integrate(y, t0, flow, t1=None):
        t1 = t_max if t1 is None else t1
        grid = solver.as_save_times(np.clip(ts, t0, t1))
        sol = solver.integrate(y, static, problem, model, grid, stop, numerics, observables,
                               jnp.asarray(t0), jnp.asarray(t1), dynamics=flow, dense=dense)
        return sol, solver.end_time(sol), jax.tree.map(lambda v: jnp.asarray(v[0]), sol.ys[1])

    runs, status = phases(y0, static, problem, integrate, step_size, edge)
    return (*_assemble(runs, status, y0), runs)


def _assemble(runs: list[Phase], status: str | None, y0):
    """The saves of every phase, in order (a save at a phase's start repeats the end of the
    one before and is dropped), the final state, the status and the step counts."""
    times, values, steps_done, end = [], [], 0, -math.inf
    stats = dict(num_steps=0, num_accepted_steps=0, num_rejected_steps=0)
    for run in runs:
        sol = run.solution
        saved = jax.tree.map(np.asarray, sol.ys[0])
        t, v = solver.trim(np.asarray(sol.ts[0]), saved)
        v[solver.STEPS] = solver.steps_before(sol.ts[2], t) + steps_done
        keep = t > end
        times.append(t[keep])
        values.append({name: a[keep] for name, a in v.items()})
        end = t[-1] if t.size else end
        for name, n in solver.stats(sol).items():
            stats[name] += n
        steps_done += solver.stats(sol)["num_accepted_steps"]
    final_state = jax.tree.map(lambda v: jnp.asarray(v[0]), runs[-1].solution.ys[1]) if runs else y0
    values = {name: np.concatenate([v[name] for v in values]) for name in values[0]} if runs else {}
    times = np.concatenate(times) if runs else np.zeros(0)
    last = {name: v[-1] for name, v in values.items()}
    status = status or (solver.status(runs[-1].solution.result, last) if runs else "solver_failed")
    t_end = runs[-1].t1 if runs else 0.0
    info = dict(clock="plain", t_final=t_end, t_switch=math.nan, t_final_local=t_end, num_steps_arclength=0,
                num_steps_plain=stats["num_steps"], edge_phases=len(runs),
                edge_switch_times=[r.t0 for r in runs[1:]], **stats)
    return np.zeros_like(times), times, values, final_state, status, info
