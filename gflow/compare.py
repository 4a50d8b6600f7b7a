"""Gradient flow beside gradient descent from the same initialization (theory.md §3).

- [`run_comparison`][]: GF (Diffrax) and GD (`gflow.descent`) from the same networks,
  with the distance of every GD run from the GF trajectory at matched times t = kη.
- [`distance_to_flow`][]: that distance, from a dense GF solution (exact to the solver's
  tolerance) or, approximately, from a GF Dataset's `end_to_end` record.
- Figures (matplotlib, Agg): final sharpness against η with 2/η, S_lower and S_upper;
  sharpness against time for GF and each GD run; final distance to π*; divergence per η;
  distance to the flow. [`save_figures`][] writes them as PNG.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from . import descent, flow, observables as obs, plots
from .models import DeepLinear, trainable
from .problem import Problem


# --- distance to the flow ----------------------------------------------------------------


def _flat_at(sol: flow.DenseSolution, times: np.ndarray) -> np.ndarray:
    """Flat trainable parameters of the GF solution at `times` (NaN past a t_max it did
    not converge by; clamped to t_final after a convergence event, where W has stopped)."""
    t_end = float(sol.solution.ts[-1])
    converged = bool(sol.solution.result == diffrax.RESULTS.event_occurred)
    ok = np.isfinite(times) & ((times <= t_end * (1 + 1e-12)) | converged)
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
    from .models import end_to_end

    return jax.vmap(lambda t: end_to_end(sol.model_at(jnp.minimum(t, sol.solution.ts[-1]))))(ts)


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
    sols = [flow.dense_solution(m, problem, flow_options) for m in nets]
    gd["distance_to_flow"] = distance_to_flow(gd, sols)
    runs = [flow.solve(m, problem, flow_options, flow_observables) for m in nets]
    if single:
        return runs[0], gd
    for r in runs:
        r["status"] = xr.DataArray(r.attrs["status"])
    gf = xr.concat(runs, dim="seed", join="outer", combine_attrs="drop_conflicts")
    gf = gf.assign_coords(seed=gd.seed.values)
    return gf, gd


def descent_for_scenario(scenario, problem: Problem, model: DeepLinear) -> xr.Dataset:
    """GD for a scenario's `[descent]` section (step_sizes, steps, seeds, record_every,
    observables), with `distance_to_flow` from a dense GF solve under the scenario's
    `[flow]` options. Without `seeds` GD starts from `model` (labelled with the
    scenario's seed); with them, from `scenario.build_model(d, seed)` for each seed (a residual network's p
    stays the scenario's)."""
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
    sols = [flow.dense_solution(m, problem, options) for m in nets]
    gd["distance_to_flow"] = distance_to_flow(gd, sols)
    return gd.drop_vars("weights")


# --- tables ------------------------------------------------------------------------------


def summary_table(gd: xr.Dataset) -> str:
    """One Markdown row per step size: outcomes, final sharpness against 2/η and S_lower."""
    s_lower = float(gd.attrs["S_lower"])
    lines = [
        f"S_lower = {s_lower:.6g}, η_crit = 2/S_lower = {2 / s_lower:.6g}",
        "",
        "| η | steps | converged | stalled | not converged | diverged | median S_final | 2/η | "
        "median S_final/S_lower | median ‖w − π*‖ |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, eta in enumerate(gd.step_size.values):
        st = gd.status.values[i]
        count = {k: int(np.sum(st == k)) for k in descent.STATUSES}
        S = gd.final_sharpness.values[i]
        conv = st == "converged"
        med = float(np.median(S[conv])) if conv.any() and np.isfinite(S[conv]).any() else np.nan
        dist = gd.final_distance_to_pi_star.values[i]
        dmed = float(np.nanmedian(dist)) if np.isfinite(dist).any() else np.nan
        lines.append(
            f"| {eta:.4g} | {int(gd.steps.values[i])} | {count['converged']} | {count['stalled']} | "
            f"{count['not_converged']} | {count['diverged']} | {med:.4g} | {2 / eta:.4g} | "
            f"{med / s_lower:.4g} | {dmed:.3e} |"
        )
    return "\n".join(lines)


# --- figures -----------------------------------------------------------------------------


def sharpness_vs_step_size(gd: xr.Dataset):
    """Final sharpness of every converged GD run against η, with 2/η, S_lower, S_upper."""
    fig, (ax,) = plots.new_figure(width=6)
    etas = gd.step_size.values
    for i, eta in enumerate(etas):
        conv = gd.status.values[i] == "converged"
        S = gd.final_sharpness.values[i]
        ax.scatter(np.full(conv.sum(), eta), S[conv], s=12, color="C0", alpha=0.6,
                   label="GD, converged" if i == 0 else None)
    grid = np.geomspace(etas.min() / 1.5, etas.max() * 1.5, 200)
    ax.plot(grid, 2 / grid, "k--", label="2/η")
    ax.axhline(gd.attrs["S_lower"], color="C3", label="S_lower = 2cLa")
    ax.axhline(gd.attrs["S_upper"], color="C2", label="S_upper")
    ax.axvline(gd.attrs["eta_crit"], color="C3", ls=":", label="η_crit = 2/S_lower")
    ax.set(xscale="log", yscale="log", xlabel="step size η", ylabel="final sharpness S",
           title="Sharpness at the end of GD")
    ax.legend(fontsize=8)
    return fig


def sharpness_vs_time(gf: xr.Dataset, gd: xr.Dataset):
    """Sharpness along GF and along each GD run (recorded, else its final value at t = steps·η).

    Log axes; each dashed line 2/η is the stability limit of its GD run, drawn only where it
    falls near the sharpness values (a line at 2/η = 1000 would flatten everything else).
    """
    fig, (ax,) = plots.new_figure(width=6.5)
    values = []
    for i, eta in enumerate(gd.step_size.values):
        color = f"C{i % 10}"
        t = gd.time.values[i]
        if "sharpness" in gd:
            s = gd.sharpness.values[i, 0]
            ok = (t > 0) & np.isfinite(s)
            ax.plot(t[ok], s[ok], color=color, lw=1.2, label=f"GD η = {eta:.3g}")
            values.append(s[ok])
        final = gd.final_sharpness.values[i, 0]
        ax.scatter([float(gd.steps.values[i]) * eta], [final], color=color, marker="o", zorder=3,
                   label=None if "sharpness" in gd else f"GD η = {eta:.3g} (final)")
        values.append(np.atleast_1d(final))
    if "sharpness" in gf:
        s = gf.sharpness if "seed" not in gf.sharpness.dims else gf.sharpness.isel(seed=0)
        t = gf.time.values
        ax.plot(t[t > 0], s.values[t > 0], "k", lw=2.5, label="GF", zorder=4)
        values.append(s.values[t > 0])
    v = np.concatenate(values)
    v = v[np.isfinite(v) & (v > 0)]
    lo, hi = (v.min() / 2, v.max() * 3) if v.size else (1e-1, 1e3)
    for i, eta in enumerate(gd.step_size.values):
        if lo < 2 / eta < hi:
            ax.axhline(2 / eta, color=f"C{i % 10}", ls="--", lw=0.8)
    ax.axhline(gd.attrs["S_lower"], color="C3", lw=1.5, ls=":", label="S_lower")
    ax.set(xscale="log", yscale="log", ylim=(lo, hi), xlabel="time t (GD: t = kη)", ylabel="sharpness S",
           title="Sharpness along GF and GD (dashed: 2/η)")
    ax.legend(fontsize=7)
    return fig


def distance_vs_step_size(gd: xr.Dataset):
    """Final ‖w − π*‖² of every run that did not diverge, against η."""
    fig, (ax,) = plots.new_figure(width=6)
    for i, eta in enumerate(gd.step_size.values):
        d = gd.final_distance_to_pi_star.values[i]
        d = d[np.isfinite(d)]
        ax.scatter(np.full(d.size, eta), np.maximum(d**2, 1e-32), s=12, color="C0", alpha=0.6)
    ax.axvline(gd.attrs["eta_crit"], color="C3", ls=":", label="η_crit = 2/S_lower")
    ax.set(xscale="log", yscale="log", xlabel="step size η", ylabel="final ‖w − π*‖²",
           title="Distance to π* at the end of GD (diverged runs left out)")
    ax.legend(fontsize=8)
    return fig


def divergence_vs_step_size(gd: xr.Dataset):
    """Fraction of runs that diverged, stalled or did not converge, per η."""
    fig, (ax,) = plots.new_figure(width=6)
    etas = gd.step_size.values
    for k, status in enumerate(("diverged", "stalled", "not_converged")):
        frac = (gd.status.values == status).mean(axis=1)
        ax.plot(etas, frac, "o-", color=f"C{k + 3}", label=status)
    ax.axvline(gd.attrs["eta_crit"], color="C3", ls=":", label="η_crit = 2/S_lower")
    ax.set(xscale="log", ylim=(-0.05, 1.05), xlabel="step size η", ylabel="fraction of runs",
           title="GD failures per step size")
    ax.legend(fontsize=8)
    return fig


def distance_to_flow_figure(gd: xr.Dataset):
    """‖W_GD(kη) − W_GF(kη)‖ over time, one line per step size (first seed)."""
    fig, (ax,) = plots.new_figure(width=6)
    for i, eta in enumerate(gd.step_size.values):
        d = gd.distance_to_flow.values[i, 0]
        t = gd.time.values[i]
        ok = np.isfinite(d) & (t > 0) & (d > 0)
        ax.plot(t[ok], d[ok], label=f"η = {eta:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="time t = kη", ylabel="distance to GF",
           title="GD against GF at matched times")
    ax.legend(fontsize=8)
    return fig


def figures(gf: xr.Dataset, gd: xr.Dataset) -> dict:
    """All comparison figures, by file stem."""
    out = {
        "gd_sharpness_vs_step_size": sharpness_vs_step_size(gd),
        "gd_sharpness_vs_time": sharpness_vs_time(gf, gd),
        "gd_distance_to_pi_star": distance_vs_step_size(gd),
        "gd_divergence": divergence_vs_step_size(gd),
    }
    if "distance_to_flow" in gd:
        out["gd_distance_to_flow"] = distance_to_flow_figure(gd)
    return out


def save_figures(gf: xr.Dataset, gd: xr.Dataset, folder: str | os.PathLike) -> list[str]:
    """Write [`figures`][] as PNG files in `folder` (atomically); returns their paths."""
    return plots.write_figures(figures(gf, gd), folder)
