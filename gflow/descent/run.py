"""A grid of GD runs as an `xarray.Dataset`: validate the arguments, execute the compiled
grid once per step count, assemble the Dataset.

GD step k sits at GF time t = kη. Divergence is recorded, never raised: a run whose risk
becomes non-finite or exceeds a threshold is frozen at that step (its weights stop moving,
its later records are NaN), so it cannot poison its neighbours in the batch, which go on.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import compilation, observables as obs, theory, trajectory
from ..models import DeepLinear, check_input_width, trainable
from ..problem import Problem
from ..trajectory import BALANCE_RESIDUAL, MAX_WEIGHT_SQ
from .batching import batch, unbatch_first
from .scan import (
    GridResult,
    GridSettings,
    InitialQuantities,
    check_kernel,
    final_quantities,
    grid,
    initial_quantities,
    record_steps,
)

STATUSES = ("converged", "diverged", "stalled", "not_converged")
"""Per-run outcomes: excess risk below `tol` at the end (‖∇R‖² for a network with an
activation, whose R_min is unknown); frozen after a blow-up; no tenfold decrease of that
quantity over the second half of the run; still decreasing."""

DEFAULT_OBSERVABLES = ("risk", "excess_risk", "distance_to_pi_star")
"""Recorded unless asked otherwise (those a network has: `risk` alone for one with an activation)."""

_WEIGHTS = obs.Observable("weights", lambda m, p, i: None, ("param",), "flat trainable parameters")
_BALANCE = (
    obs.Observable(BALANCE_RESIDUAL, None, ("interface",),
                   "‖D_k(t) − D_k(0) − η²Σ_j(G_{k+1}ᵀG_{k+1} − G_kG_kᵀ)‖_F: zero for exact GD arithmetic"),
    obs.Observable(MAX_WEIGHT_SQ, None, (), "largest Σ_k‖W_k‖_F² along the run so far"),
)
"""Recorded with `balance_drift`: GD tested against its exact conservation identity."""


class Plan(NamedTuple):
    """The validated arguments of [`run`][]: what the grid runs.

    - `step_sizes`: η values, (E,); `steps`, `record_every`: one int per step size.
    - `observables`: the registry `Observable`s recorded.
    - `seeds`: labels of the initializations, (S,).
    - `network`: the first network (kind, widths, p); `params`, `static`: the batch's
      trainable leaves (leading axis S) and the rest, shared.
    """

    step_sizes: np.ndarray
    steps: list[int]
    record_every: list[int]
    observables: tuple[obs.Observable, ...]
    seeds: np.ndarray
    network: DeepLinear
    params: DeepLinear
    static: DeepLinear


def run(
    models: DeepLinear | Sequence[DeepLinear],
    problem: Problem,
    step_sizes: float | Sequence[float],
    steps: int | Sequence[int],
    *,
    record_every: int | Sequence[int] | None = None,
    observables: Sequence[str] | None = None,
    final_sharpness: bool = True,
    initial_sharpness: bool = False,
    record_weights: bool = False,
    tol: float = 1e-8,
    diverge_factor: float = 1e6,
    diverge_above: float | None = None,
    lanczos_steps: int = 40,
    seeds: Sequence | None = None,
    kernel: str = "fused",
) -> xr.Dataset:
    """GD from every initialization at every step size, vectorized: one compiled scan under
    `vmap` over (step sizes × initializations) per distinct step count.

    **Arguments:**

    - `models`: one network, a list of networks of equal shapes, or a batch from [`batch`][].
    - `problem`: the regression problem.
    - `step_sizes`: η values (distinct, positive).
    - `steps`: number of GD steps, one for all or one per step size.
    - `record_every`: steps between records (one or one per step size); default about 100
      records per run. The last step is always recorded.
    - `observables`: registry names recorded (ask for "sharpness" only when needed: each
      record costs a Lanczos run); None: those of `DEFAULT_OBSERVABLES` the network has.
    - `final_sharpness`, `initial_sharpness`: Lanczos sharpness at the end / start of each run.
    - `record_weights`: also record the flat trainable parameters (variable `weights`).
    - `tol`: a run is "converged" when its final excess risk R − R_min ≤ tol (a network with
      an activation: its final ‖∇R‖² ≤ tol).
    - `diverge_factor`, `diverge_above`: a run diverges when its risk is non-finite or above
      `diverge_above` (default `diverge_factor`·R(W(0)) for each initialization).
    - `lanczos_steps`: Lanczos steps of the end-of-run sharpness.
    - `seeds`: labels of the initializations (coordinate `seed`; default 0, 1, …).
    - `kernel`: "fused" (a linear network's gradient on the sufficient statistics, several
      times faster) or "autodiff" (the general path; see `GridSettings`). They agree to
      round-off; the choice is kept in `attrs["kernel"]`.

    **Returns:** an `xarray.Dataset` on dims (`step_size`, `seed`, `record`, …) with the
    coordinates `step` and `time` = η·step on (`step_size`, `record`) (NaN where a step size
    has fewer records); per run `status`, `diverged_at_step` (−1: never),
    `final_excess_risk` and `final_distance_to_pi_star` (with an activation:
    `final_grad_norm_sq` and `final_risk`), `final_sharpness` (NaN when diverged),
    `weights_final`; per initialization `initial_risk`, `weights_initial`; and
    in `attrs` the problem's constants, S_lower, S_upper, η_crit = 2/S_lower, settings and
    wall time.
    """
    plan = validate(
        models, problem, step_sizes, steps, record_every=record_every, observables=observables, seeds=seeds,
        tol=tol, diverge_factor=diverge_factor, diverge_above=diverge_above, lanczos_steps=lanczos_steps,
        kernel=kernel,
    )
    compilation.release_if_crowded()
    start = _time.perf_counter()
    initial = initial_quantities(plan.params, plan.static, problem, lanczos_steps, initial_sharpness)
    risk0 = np.asarray(initial.risk)
    thresholds = np.full(risk0.size, diverge_above) if diverge_above is not None else diverge_factor * risk0
    track = any(o.name == "balance_drift" for o in plan.observables)
    results = execute(plan, problem, thresholds, record_weights=record_weights, final_sharpness=final_sharpness,
                      lanczos_steps=lanczos_steps, track_balance=track, kernel=kernel)
    settings = dict(method="gradient_descent", tol=tol, diverge_factor=diverge_factor, diverge_above=diverge_above,
                    lanczos_steps=lanczos_steps, kernel=kernel, observables=[o.name for o in plan.observables],
                    wall_time_s=_time.perf_counter() - start)
    return assemble(plan, problem, initial, results, settings, record_weights=record_weights,
                    final_sharpness=final_sharpness, track_balance=track)


# --- validation ----------------------------------------------------------------------------


def positive_int(value, name: str) -> int:
    """`value` as an int, or a `ValueError` naming `name` unless it is an integer ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1; got {value!r}.")
    return int(value)


def _per_step_size(value, n: int, name: str, default=None) -> list[int]:
    if value is None:
        return [default] * n
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return [positive_int(value, name)] * n
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"{name} must be an integer ≥ 1 or one per step size; got {value!r}.")
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} must be one integer or one per step size ({n}); got {len(values)}.")
    return [positive_int(v, f"{name}[{i}]") for i, v in enumerate(values)]


def _step_sizes(step_sizes) -> np.ndarray:
    etas = np.atleast_1d(np.asarray(step_sizes, dtype=np.float64))
    if etas.ndim != 1 or etas.size == 0:
        raise ValueError(f"step_sizes must be a non-empty list of numbers; got {step_sizes!r}.")
    if not np.all(np.isfinite(etas)) or np.any(etas <= 0):
        raise ValueError(f"every step size must be a finite positive number; got {etas.tolist()}.")
    if len(set(etas.tolist())) != etas.size:
        raise ValueError(f"step sizes must be distinct; got {etas.tolist()}.")
    return etas


def _check_settings(tol, diverge_factor, diverge_above, lanczos_steps, kernel) -> None:
    check_kernel(kernel)
    if not (isinstance(tol, int | float) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number ≥ 0; got {tol!r}.")
    if not (isinstance(diverge_factor, int | float) and diverge_factor > 1):
        raise ValueError(f"diverge_factor must be a number > 1; got {diverge_factor!r}.")
    if diverge_above is not None and not (diverge_above > 0):
        raise ValueError(f"diverge_above must be positive; got {diverge_above!r}.")
    positive_int(lanczos_steps, "lanczos_steps")


def validate(
    models, problem: Problem, step_sizes, steps, *, record_every, observables, seeds,
    tol, diverge_factor, diverge_above, lanczos_steps, kernel="fused",
) -> Plan:
    """The [`Plan`][] of a [`run`][] call (same arguments), or a `ValueError` that says
    what to change."""
    etas = _step_sizes(step_sizes)
    step_counts = _per_step_size(steps, etas.size, "steps")
    everies = _per_step_size(record_every, etas.size, "record_every")
    everies = [max(1, s // 100) if r is None else min(r, s) for r, s in zip(everies, step_counts)]
    _check_settings(tol, diverge_factor, diverge_above, lanczos_steps, kernel)
    batched = batch(models)
    n_init = batched.p.shape[0]
    network = unbatch_first(batched)
    check_input_width(network, problem.d)
    if observables is None:
        observables = obs.applicable(DEFAULT_OBSERVABLES, network.activation)
    try:
        observables = obs.get(list(observables), network)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    if len({o.name for o in observables}) != len(observables):
        raise ValueError("observables are listed twice.")
    seeds = np.arange(n_init) if seeds is None else np.asarray(seeds)
    if seeds.shape != (n_init,):
        raise ValueError(f"seeds must have one label per network ({n_init}); got {seeds.shape}.")
    params, static = eqx.partition(batched, trainable(batched))
    static = jax.tree.map(lambda x: x[0], static)
    return Plan(etas, step_counts, everies, tuple(observables), seeds, network, params, static)


# --- execution -----------------------------------------------------------------------------


def execute(plan: Plan, problem: Problem, thresholds: np.ndarray, **settings) -> list[GridResult]:
    """Run the grid: one compiled [`grid`][gflow.descent.scan.grid] call per distinct
    (steps, record_every), over its step sizes × all initializations.

    `settings` are the other fields of [`GridSettings`][] (record_weights,
    final_sharpness, lanczos_steps). **Returns:** one [`GridResult`][] per step size, in
    the order of `plan.step_sizes`, as NumPy arrays with a leading initialization axis.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(plan.steps, plan.record_every)):
        groups.setdefault(key, []).append(i)
    results: list[GridResult | None] = [None] * plan.step_sizes.size
    for (steps, every), idx in groups.items():
        group = GridSettings(steps=steps, record_every=every, observables=plan.observables, **settings)
        out = grid(plan.params, plan.static, problem, jnp.asarray(plan.step_sizes[idx]),
                   jnp.asarray(thresholds), group)
        out = jax.tree.map(np.asarray, out)
        for j, i in enumerate(idx):
            results[i] = jax.tree.map(lambda x: x[j], out)
    return results


# --- assembly ------------------------------------------------------------------------------


def classify(final, at_half, diverged_at, tol: float) -> np.ndarray:
    """The [`STATUSES`][] of runs from the quantity that decides convergence (excess risk,
    or ‖∇R‖² with an activation) at their end and at half of the run, and their divergence
    step (−1: never)."""
    status = np.full(diverged_at.shape, "not_converged", dtype=object)
    with np.errstate(invalid="ignore", divide="ignore"):
        status[final >= 0.1 * at_half] = "stalled"
    status[final <= tol] = "converged"
    status[diverged_at >= 0] = "diverged"
    return status.astype(str)


def _outcomes(results: list[GridResult], network: DeepLinear, tol: float, final_sharpness: bool) -> dict:
    """Per-run variables on (step_size, seed): status, divergence step, final quantities."""

    def stacked(get):
        return np.stack([get(r) for r in results])

    diverged_at = stacked(lambda r: r.diverged_at).astype(np.int64)
    final = {k: stacked(lambda r, k=k: r.final[k]) for k in results[0].final}
    decides = final_quantities(network)[0]
    runs = ("step_size", "seed")
    out = {
        "status": (runs, classify(final[decides], stacked(lambda r: r.progress_at_half), diverged_at, tol)),
        "diverged_at_step": (runs, diverged_at),
    }
    out.update({f"final_{k}": (runs, final[k]) for k in final_quantities(network)})
    out["final_sharpness"] = (runs, final["sharpness"] if final_sharpness else np.full(diverged_at.shape, np.nan))
    return out


def _records(results: list[GridResult], names, n_rec: int) -> dict[str, np.ndarray]:
    """Each record on (step_size, seed, record, …), padded with NaN to `n_rec` records."""
    out = {}
    for name in names:
        rows = []
        for r in results:
            v = r.records[name]  # (seed, record, ...)
            pad = np.full((v.shape[0], n_rec - v.shape[1], *v.shape[2:]), np.nan)
            rows.append(np.concatenate([v, pad], axis=1))
        out[name] = np.stack(rows)
    return out


def _record_coordinates(plan: Plan) -> dict:
    """Coordinates step_size, seed, record, and step and time = η·step on (step_size, record)."""
    kept = [record_steps(s, e) for s, e in zip(plan.steps, plan.record_every)]
    step = np.full((plan.step_sizes.size, max(ks.size for ks in kept)), np.nan)
    for i, ks in enumerate(kept):
        step[i, : ks.size] = ks
    return dict(
        step_size=("step_size", plan.step_sizes),
        seed=("seed", plan.seeds),
        record=("record", np.arange(step.shape[1])),
        step=(("step_size", "record"), step),
        time=(("step_size", "record"), step * plan.step_sizes[:, None]),
    )


def assemble(
    plan: Plan,
    problem: Problem,
    initial: InitialQuantities,
    results: list[GridResult],
    settings: dict,
    *,
    record_weights: bool,
    final_sharpness: bool,
    track_balance: bool = False,
) -> xr.Dataset:
    """The GD Dataset (see [`run`][]) from the plan, the initial quantities and the
    results of [`execute`][]; `settings` go to `attrs` after the problem and the bounds."""
    coords = _record_coordinates(plan)
    recorded = plan.observables + ((_WEIGHTS,) if record_weights else ()) + (_BALANCE if track_balance else ())
    records = _records(results, [o.name for o in recorded], coords["record"][1].size)
    data = trajectory.observable_variables(recorded, records, ("step_size", "seed", "record"))
    data.update(_outcomes(results, plan.network, settings["tol"], final_sharpness))
    data["steps"] = (("step_size",), np.asarray(plan.steps, np.int64))
    data["record_every"] = (("step_size",), np.asarray(plan.record_every, np.int64))
    data["initial_risk"] = (("seed",), np.asarray(initial.risk))
    data["initial_sharpness"] = (("seed",), np.asarray(initial.sharpness, np.float64) * np.ones(plan.seeds.size))
    final_params = jax.tree.map(lambda *xs: np.stack(xs), *[r.final_params for r in results])
    fields = trajectory.network_fields(
        eqx.combine(plan.params, plan.static), eqx.combine(final_params, plan.static), problem,
        model=plan.network, initial_dims=("seed",), final_dims=("step_size", "seed"),
    )
    data.update(fields.data)
    coords.update(fields.coords)
    attrs = dict(fields.attrs)
    attrs.update(bounds(problem, plan.network))
    attrs.update(settings)
    return trajectory.dataset(data, coords, attrs)


def bounds(problem: Problem, model: DeepLinear) -> dict[str, float]:
    """S_lower, S_upper, η_crit = 2/S_lower, … from `gflow.theory.bounds` (theory.md §2–3),
    and ‖p‖, for one network `model`."""
    p_norm = float(np.linalg.norm(np.asarray(model.p)))
    return dict(theory.bounds(problem, model.depth, p_norm), p_norm=p_norm)


def model_from(ds: xr.Dataset, step_size: float | None = None, seed=None, which: str = "final") -> DeepLinear:
    """Rebuild one network of a GD Dataset: the final one of run (`step_size`, `seed`), or
    the initial one of `seed` (`which="initial"`). `None` picks the first."""
    W = ds[f"weights_{which}"]
    W = W.sel(seed=seed) if seed is not None else W.isel(seed=0)
    if which == "final":
        W = W.sel(step_size=step_size) if step_size is not None else W.isel(step_size=0)
    return trajectory.network(W.values, ds)
