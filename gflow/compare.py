"""Gradient flow beside gradient descent from the same initialization (theory.md §3).

- [`distance_to_flow`][]: the distance of every GD run from the GF trajectory at matched
  times t = kη, from a dense GF solution (exact to the solver's tolerance) or,
  approximately, from a GF Dataset's `end_to_end` record.
- [`run_comparison`][]: GF (Diffrax) and GD (`gflow.descent`) from the same networks,
  with that distance.
- [`finite_step_flows`][]: the modified and the central flow (continuous-time models of
  GD at a finite η, theory.md §11) at every step size of a GD Dataset, with their distance
  to GD.
- [`descent_for_scenario`][]: the same for a scenario's `[descent]` section (what
  `gflow run` does with it).

The figures live in `gflow.plots.descent` and the GD table in `gflow.tables`; both are
re-exported here under their old names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from . import descent, flow, observables as obs
from .dynamics import FINITE_STEP
from .models import DeepLinear, end_to_end, trainable
from .plots.descent import (
    distance_to_flow_figure,
    distance_vs_step_size,
    divergence_vs_step_size,
    figures,
    risk_vs_time,
    save_figures,
    sharpness_vs_step_size,
    sharpness_vs_time,
)
from .problem import Problem
from .tables import summary_table

__all__ = [
    "descent_for_scenario",
    "distance_to_flow",
    "finite_step_flows",
    "run_comparison",
    # re-exported from gflow.plots.descent and gflow.tables
    "distance_to_flow_figure",
    "distance_vs_step_size",
    "divergence_vs_step_size",
    "figures",
    "risk_vs_time",
    "save_figures",
    "sharpness_vs_step_size",
    "sharpness_vs_time",
    "summary_table",
]


# --- distance to the flow ----------------------------------------------------------------


def _flat_at(sol: flow.DenseSolution, times: np.ndarray) -> np.ndarray:
    """Flat trainable parameters of the GF solution at `times` (NaN past a t_max it did
    not converge by; clamped to t_final after a convergence event, where W has stopped)."""
    t_end = sol.t_final
    ok = np.isfinite(times) & ((times <= t_end * (1 + 1e-12)) | sol.converged)
    t = jnp.asarray(np.where(ok, np.minimum(np.nan_to_num(times), t_end), 0.0))
    out = np.array(_flat_at_times(sol, t.ravel())).reshape(*times.shape, -1)
    out[~ok] = np.nan
    return out


@eqx.filter_jit
def _flat_at_times(sol, ts):
    def at(t):
        model = sol.model_at(t)
        return ravel_pytree(eqx.filter(model, trainable(model)))[0]

    return jax.vmap(at)(ts)


def distance_to_flow(
    gd: xr.Dataset,
    gf: flow.DenseSolution | Sequence[flow.DenseSolution] | xr.Dataset,
) -> xr.DataArray:
    """‖W_GD(kη) − W_GF(kη)‖ at every record of every GD run.

    **Arguments:**

    - `gd`: a Dataset from [`gflow.descent.run`][]. With its `weights` record (run it with
      `record_weights=True`) the distance is between flat trainable parameters; otherwise
      between end-to-end regressors (its `end_to_end` record).
    - `gf`: a dense GF solution from the same initialization (one, or one per `seed`
      of `gd`), or a GF Dataset with an `end_to_end` record, interpolated linearly in time
      (approximate: GF save times are usually log-spaced; prefer the dense solution).

    **Returns:** a DataArray on (`step_size`, `seed`, `record`).
    """
    times = gd.time.values  # (step_size, record)
    if isinstance(gf, xr.Dataset):
        if "end_to_end" not in gf or "end_to_end" not in gd:
            raise ValueError("distance from a GF Dataset needs the end_to_end observable in both Datasets.")
        if "seed" in gf.end_to_end.dims:
            raise ValueError("give the GF Dataset of one initialization (e.g. gf.isel(seed=0)).")
        t_gf, w_gf = gf.time.values, gf.end_to_end.values
        ok = np.isfinite(t_gf) & np.all(np.isfinite(w_gf), axis=1)
        t_gf, w_gf = t_gf[ok], w_gf[ok]
        status = gf["status"].item() if "status" in gf else gf.attrs.get("status")
        hold = str(status) == "converged"  # GF has stopped at its minimizer: hold the last value
        ref = np.stack([np.interp(times.ravel(), t_gf, w_gf[:, j], right=w_gf[-1, j] if hold else np.nan)
                        for j in range(w_gf.shape[1])], axis=-1).reshape(*times.shape, -1)
        diff = gd.end_to_end.values - ref[:, None]
        return _as_distance(diff, gd, "end-to-end regressors, GF interpolated linearly")
    sols = [gf] if isinstance(gf, flow.DenseSolution) else list(gf)
    n_seed = gd.sizes["seed"]
    if len(sols) == 1:
        sols = sols * n_seed
    if len(sols) != n_seed:
        raise ValueError(f"give one dense solution, or one per seed ({n_seed}); got {len(sols)}.")
    per_seed = []
    for j, sol in enumerate(sols):
        flat = _flat_at(sol, times)  # (step_size, record, P)
        if "weights" in gd:
            per_seed.append(gd.weights.values[:, j] - flat)
        elif "end_to_end" in gd:
            ends = np.array(_ends_at_times(sol, jnp.asarray(np.nan_to_num(times).ravel())))
            ends = ends.reshape(*times.shape, -1)
            ends[np.isnan(flat[..., 0])] = np.nan
            per_seed.append(gd.end_to_end.values[:, j] - ends)
        else:
            raise ValueError("the GD Dataset needs a `weights` record (record_weights=True) or `end_to_end`.")
    diff = np.stack(per_seed, axis=1)
    what = "trainable parameters" if "weights" in gd else "end-to-end regressors"
    return _as_distance(diff, gd, what)


@eqx.filter_jit
def _ends_at_times(sol, ts):
    return jax.vmap(lambda t: end_to_end(sol.model_at(jnp.minimum(t, sol.ends[-1]))))(ts)


def _as_distance(diff, gd, what):
    d = np.sqrt(np.sum(diff**2, axis=-1))
    return xr.DataArray(
        d,
        dims=("step_size", "seed", "record"),
        coords={k: gd.coords[k] for k in ("step_size", "seed", "record", "step", "time")},
        attrs={"description": f"distance between GD and GF at t = kη ({what})"},
    )


# --- running both ------------------------------------------------------------------------


def run_comparison(
    models: DeepLinear | Sequence[DeepLinear],
    problem: Problem,
    flow_options: flow.FlowOptions,
    step_sizes: float | Sequence[float],
    steps: int | Sequence[int],
    *,
    seeds: Sequence | None = None,
    record_every: int | Sequence[int] | None = None,
    observables: Sequence[str] = descent.DEFAULT_OBSERVABLES,
    flow_observables: Sequence[str] = obs.DEFAULT,
    **descent_kwargs,
) -> tuple[xr.Dataset, xr.Dataset]:
    """GF and GD from the same networks; GD gets the variable `distance_to_flow`.

    **Arguments:**

    - `models`: one network, or one per seed (equal shapes).
    - `problem`: the regression problem.
    - `flow_options`: a `FlowOptions` for GF (its `t_max` should cover the GD horizons
      steps·η; past a t_max that GF did not converge by, the distance is NaN).
    - `step_sizes`, `steps`, `record_every`, `observables`: as in [`gflow.descent.run`][].
    - `seeds`: labels of the networks (coordinate `seed`).
    - `flow_observables`: recorded along GF.
    - `descent_kwargs`: passed on to [`gflow.descent.run`][].

    **Returns:** `(gf, gd)`: the GF Dataset of `gflow.solve` (for several networks, the
    Datasets concatenated along `seed`, each with its `status` as a variable), and the GD
    Dataset.
    """
    single = isinstance(models, DeepLinear) and jnp.ndim(models.p) == 1
    nets = [models] if single else descent.unbatch(descent.batch(models))
    descent_kwargs.setdefault("record_weights", True)
    gd = descent.run(nets, problem, step_sizes, steps, record_every=record_every,
                     observables=observables, seeds=seeds, **descent_kwargs)
    _add_distance_to_flow(gd, nets, problem, flow_options)
    runs = [flow.solve(m, problem, flow_options, flow_observables) for m in nets]
    if single:
        return runs[0], gd
    for r in runs:
        r["status"] = xr.DataArray(r.attrs["status"])
    gf = xr.concat(runs, dim="seed", join="outer", combine_attrs="drop_conflicts")
    gf = gf.assign_coords(seed=gd.seed.values)
    return gf, gd


def finite_step_flows(
    model: DeepLinear,
    problem: Problem,
    gd: xr.Dataset,
    options: flow.FlowOptions,
    dynamics: Sequence[str] = FINITE_STEP,
    observables: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, xr.Dataset]:
    """The modified and/or central flow at every step size η of `gd`, from `model` (the
    initialization of GD's seed index `seed`), each over that η's GD horizon steps·η.

    **Arguments:**

    - `model`, `problem`: the network at t = 0 and the data.
    - `gd`: a GD Dataset from `model` with its `weights` record (`record_weights=True`).
    - `options`: the `FlowOptions` of the flows (their `dynamics`, `step_size`, `t_max` and
      `t_first`, GD's first record, are set here).
    - `dynamics`: which flows ("modified", "central").
    - `observables`: recorded along the flows (None: the defaults).

    **Returns:** the flows' trajectories by name "<dynamics>-eta<η>"; `gd` gets
    `distance_to_<dynamics>` on (step_size, seed, record): ‖W_GD(kη) − W_flow(kη)‖ for
    that seed, from the flow's dense solution (NaN for the other seeds).
    """
    flows = {}
    for name in dynamics:
        distance = np.full((gd.sizes["step_size"], gd.sizes["seed"], gd.sizes["record"]), np.nan)
        for i, eta in enumerate(gd.step_size.values):
            t = gd.time.values[i]
            first = float(np.nanmin(t[t > 0]))  # log-spaced saves from GD's first record on
            opts = dataclasses.replace(options, dynamics=name, step_size=float(eta), t_max=float(np.nanmax(t)),
                                       t_first=first if first < np.nanmax(t) else None, clock="plain")
            flows[f"{name}-eta{eta:g}"], dense = flow.solve_and_interpolate(model, problem, opts, observables)
            one = gd.isel(step_size=[i], seed=[seed])
            distance[i, seed] = distance_to_flow(one, dense).values[0, 0]
        gd[f"distance_to_{name}"] = (("step_size", "seed", "record"), distance,
                                     {"description": f"distance between GD and the {name} flow at t = kη"})
    return flows


def descent_for_scenario(scenario, problem: Problem, model: DeepLinear) -> tuple[xr.Dataset, dict[str, xr.Dataset]]:
    """GD for a scenario's `[descent]` section (step_sizes, steps, seeds, record_every,
    observables), with `distance_to_flow` from a dense GF solve under the scenario's
    `[flow]` options. Without `seeds` GD starts from `model` (labelled with the
    scenario's seed); with them, from `scenario.build_model(d, seed)` for each seed (a residual network's p
    stays the scenario's). With `central` or `modified`, those flows at every η from GD's
    first initialization ([`finite_step_flows`][], recording `record.observables`).

    **Returns:** (the GD Dataset, the finite-step flows by name).
    """
    sec = scenario.descent
    if sec.seeds:
        nets = [scenario.build_model(problem.d, s) for s in sec.seeds]
        labels = list(sec.seeds)
    else:
        nets, labels = [model], [scenario.seed]
    gd = descent.run(nets, problem, sec.step_sizes, sec.steps, record_every=sec.record_every,
                     observables=sec.observables, seeds=labels, record_weights=True)
    options = scenario.flow.options()
    horizon = float(np.nanmax(gd.time.values))
    if horizon > options.t_max:
        options = dataclasses.replace(options, t_max=horizon)
    _add_distance_to_flow(gd, nets, problem, options)
    which = [name for name in FINITE_STEP if getattr(sec, name)]
    flows = finite_step_flows(nets[0], problem, gd, scenario.flow.options(), which, scenario.record.observables)
    return gd.drop_vars("weights"), flows


def _add_distance_to_flow(gd: xr.Dataset, nets, problem: Problem, options: flow.FlowOptions) -> None:
    """Add `distance_to_flow` to `gd`, from a dense GF solve per network of `nets`."""
    sols = [flow.dense_solution(m, problem, options) for m in nets]
    gd["distance_to_flow"] = distance_to_flow(gd, sols)
