"""The gradient-flow point of a chunk (η → 0): every initialization of the chunk in one
`jax.vmap`-ed Diffrax solve, of which only the end is kept.

`jax.vmap` over `gflow.solver.diffeqsolve` gives every member its own PID controller,
step sizes, convergence event and step count inside one shared while loop (a member that
has finished keeps its state while the others step on), so each member follows the path
its own `gflow.flow.solve` would, to the solver's tolerance (round-off in a batched
program, and `flow.solve`'s segments of long solves, change the steps slightly): the
same solver, tolerances, event and `max_steps`, with the observables evaluated once, at
the final state (the last save of a solve). One program per chunk shape replaces one
`flow.solve` per (point, seed) in a Python loop. The loop runs until the slowest member
ends: members of very different stiffness in one chunk cost the steps of the stiffest.

A member that `flow.solve` would integrate otherwise (the arc-length clock, picked by
`clock = "auto"` from its plateau time or asked for, or another `dynamics`) is solved by
`flow.solve` itself, one at a time, and so is a member solved by a solver whose work per
step is its own (`UNBATCHED`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import flow, solver
from .. import observables as obs
from ..clock import AUTO_PLATEAU_TIME, plateau_time
from ..models import trainable
from ..stabilized import RKC2


UNBATCHED = tuple(name for name, cls in solver.SOLVERS.items() if issubclass(cls, RKC2))
"""Solvers whose members are solved one at a time: RKC2's stage count follows each member's
stiffness, and in a batch every step of every member would take the stiffest member's
stages (measured on the GELU experiment's point at scale 0.7: 20 members batched took
948 s; one at a time, 3–26 s each after compiling, 134 s for the first 16)."""


def gf_point(models: Sequence, problem, options: Sequence[flow.FlowOptions], names: Sequence[str]) -> dict:
    """GF from every network of `models` under the matching `options`, to convergence or
    the horizon; what `flow.solve` records at its end.

    **Arguments:**

    - `models`: the initial networks (equal shapes), one per (point, seed).
    - `problem`: the regression problem they share.
    - `options`: one `gflow.flow.FlowOptions` each.
    - `names`: scalar observables to evaluate at the end.

    **Returns:** `status` (strings, as `flow.solve`'s `attrs["status"]`), `t_final`, and
    one array per name, each of length `len(models)`.
    """
    n = len(models)
    out = {"status": np.full(n, "", object), "t_final": np.full(n, np.nan)}
    out.update({name: np.full(n, np.nan) for name in names})
    batched: dict[tuple, list[int]] = {}
    for i, (model, opt) in enumerate(zip(models, options)):
        if _plain_gf(model, problem, opt):
            batched.setdefault((opt.solver, int(opt.max_steps)), []).append(i)
        else:
            ds = flow.solve(model, problem, opt, names)
            out["status"][i], out["t_final"][i] = ds.attrs["status"], ds.attrs["t_final"]
            for name in names:
                out[name][i] = float(ds[name].values[-1])
    for idx in batched.values():
        status, t_final, values = _solve_many([models[i] for i in idx], problem, [options[i] for i in idx], names)
        out["status"][idx], out["t_final"][idx] = status, t_final
        for name in names:
            out[name][idx] = values[name]
    return out


def _plain_gf(model, problem, options: flow.FlowOptions) -> bool:
    """Whether this one joins the batch: `flow.solve` integrates it as gradient flow in
    plain time, with a solver that batches well."""
    if options.dynamics != "gradient_flow" or options.clock == "arclength" or options.solver in UNBATCHED:
        return False
    if options.clock == "plain":
        return True
    return not float(plateau_time(model, problem)) > math.log10(AUTO_PLATEAU_TIME)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _solve_many(models, problem, options, names):
    """The plain-time GF solves of `models` (one solver and step cap), batched."""
    observables = obs.get(list(names), models[0])
    arrays = _stack([eqx.filter(m, eqx.is_array) for m in models])
    rest = eqx.filter(models[0], eqx.is_array, inverse=True)
    numerics = _stack([solver.numerics(o) for o in options])
    t1 = jnp.asarray([float(o.t_max) for o in options])
    stop = jnp.asarray([float(o.stop_at_excess_risk) for o in options])
    t_end, result, values = _integrate(arrays, rest, problem, t1, stop, numerics, observables)
    values = jax.tree.map(np.asarray, values)
    result = jax.tree.map(np.asarray, result)
    status = np.array([solver.status(jax.tree.map(lambda r: r[j], result), {k: v[j] for k, v in values.items()})
                       for j in range(len(models))], object)
    return status, np.asarray(t_end), {name: values[name] for name in names}


@eqx.filter_jit
def _integrate(arrays, rest, problem, t1, stop, numerics: solver.Numerics, observables):
    """`jax.vmap` of one plain-time GF solve (what `flow.solve` runs: `solver.diffeqsolve`
    from t = 0, saving at t1) over the initial networks' arrays, horizons, stopping
    thresholds and tolerances; (t_final, result, record at the final state) per member."""

    def one(arrays, t1, stop, numerics):
        model = eqx.combine(arrays, rest)
        params, static = eqx.partition(model, trainable(model))
        save = diffrax.SaveAt(t1=True)
        sol = solver.diffeqsolve(solver.initial_state(params), static, problem, model, jnp.zeros_like(t1), t1,
                                 save, stop, numerics)
        final = jax.tree.map(lambda v: v[-1], sol.ys)
        return sol.ts[-1], sol.result, solver.record(observables, final, (static, problem, model))

    return jax.vmap(one)(arrays, t1, stop, numerics)
