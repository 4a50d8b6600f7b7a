"""Gradient descent W ← W − η∇R beside gradient flow (theory.md §3).

One run is a `lax.scan` over steps (nested: an outer scan over records, an inner one over
the `record_every` steps between them), so observables cost only where they are kept. A
grid of runs is that scan under two `vmap`s, over step sizes and over initializations, in
one compiled call per distinct step count. GD step k sits at GF time t = kη.

Divergence is recorded, never raised: a run whose risk becomes non-finite or exceeds a
threshold is frozen at that step (its weights stop moving, its later records are NaN),
so it cannot poison its neighbours in the batch, which go on.
"""

from __future__ import annotations

import dataclasses
import math
import time as _time
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from . import linalg, observables as obs, trajectory
from .models import DeepLinear, check_input_width, end_to_end, trainable
from .problem import Problem

STATUSES = ("converged", "diverged", "stalled", "not_converged")
"""Per-run outcomes: excess risk below `tol` at the end; frozen after a blow-up; no
tenfold decrease of the excess risk over the second half of the run; still decreasing."""

DEFAULT_OBSERVABLES = ("risk", "excess_risk", "distance_to_pi_star")


# --- the pure core -----------------------------------------------------------------------


def _excess(params, static, problem):
    model = eqx.combine(params, static)
    return problem.excess_risk(end_to_end(model, unroll=model.depth <= 64))


def _sharpness(params, static, problem, lanczos_steps):
    f, x = obs.flat_risk(eqx.combine(params, static), problem)
    return linalg.top_hessian_eigenvalue(f, x, lanczos_steps)


def descend(
    params,
    static: DeepLinear,
    problem: Problem,
    step_size,
    diverge_above,
    *,
    steps: int,
    record_every: int,
    observables: tuple[obs.Observable, ...] = (),
    record_weights: bool = False,
):
    """`steps` steps of GD from `eqx.combine(params, static)`, pure and jittable.

    At step k (0-based) the risk R(W_k) is checked first: if it is non-finite or above
    `diverge_above`, the run is frozen at W_k and `diverged_at = k`; otherwise
    W_{k+1} = W_k − η∇R(W_k). W_steps is checked the same way.

    **Arguments:**

    - `params`, `static`: the trainable leaves and the rest (`eqx.partition`).
    - `problem`: the regression problem.
    - `step_size`: η (a traced scalar: vmap over it).
    - `diverge_above`: risk threshold for divergence (traced scalar).
    - `steps`, `record_every`: static ints; records at k = 0, r, 2r, … ≤ steps and at steps.
    - `observables`: registry `Observable`s computed at the records.
    - `record_weights`: also record the flat trainable parameters.

    **Returns:** `(final_params, diverged_at, excess_at_half, records)` where `diverged_at`
    is −1 for a run that never diverged and `records` maps names to arrays with a
    leading record axis (NaN from the divergence on).
    """
    initial = eqx.combine(params, static)
    value_and_grad = jax.value_and_grad(_excess)
    half = steps // 2

    def bad(excess):
        risk = problem.R_min + excess
        return ~jnp.isfinite(risk) | (risk > diverge_above)

    def step(carry, _):
        q, k, div, mid = carry
        e, g = value_and_grad(q, static, problem)
        div = jnp.where((div < 0) & bad(e), k, div)
        live = div < 0
        q = jax.tree.map(lambda x, gx: jnp.where(live, x - step_size * gx, x), q, g)
        mid = jnp.where(k == half, e, mid)
        return (q, k + 1, div, mid), None

    def record(q, k, div):
        model = eqx.combine(q, static)
        out = {o.name: o(model, problem, initial) for o in observables}
        if record_weights:
            out["weights"] = ravel_pytree(q)[0]
        gone = ((div >= 0) & (div <= k)) | bad(_excess(q, static, problem))
        return {name: jnp.where(gone, jnp.nan, v) for name, v in out.items()}

    def chunk(carry, _):
        carry, _ = jax.lax.scan(step, carry, None, length=record_every)
        q, k, div, _mid = carry
        return carry, record(q, k, div)

    n_chunks, rest = divmod(steps, record_every)
    carry = (params, jnp.array(0), jnp.array(-1), jnp.array(jnp.nan))
    one_record = lambda rec: jax.tree.map(lambda x: x[None], rec)  # noqa: E731
    carry, recs = jax.lax.scan(chunk, carry, None, length=n_chunks)
    parts = [one_record(record(params, 0, -1)), recs]
    if rest:
        carry, _ = jax.lax.scan(step, carry, None, length=rest)
        parts.append(one_record(record(*carry[:3])))
    q, k, div, mid = carry
    div = jnp.where((div < 0) & bad(_excess(q, static, problem)), k, div)
    recs = jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
    return q, div, mid, recs


@eqx.filter_jit
def _grid(params, static, problem, etas, thresholds, options):
    """vmap of `descend` over step sizes (outer) and initializations (inner), plus the
    end-of-run quantities; `options` is a hashable tuple of static settings."""
    steps, every, observables, record_weights, final_sharpness, lanczos_steps = options

    def one(q, eta, thr):
        q, div, mid, recs = descend(
            q, static, problem, eta, thr, steps=steps, record_every=every,
            observables=observables, record_weights=record_weights,
        )
        w = end_to_end(eqx.combine(q, static))
        final = dict(
            excess_risk=problem.excess_risk(w),
            distance_to_pi_star=jnp.linalg.norm(w - problem.pi_star),
        )
        if final_sharpness:
            final["sharpness"] = _sharpness(q, static, problem, lanczos_steps)
        gone = div >= 0
        final = {k: jnp.where(gone, jnp.nan, v) for k, v in final.items()}
        return q, div, mid, final, recs

    over_inits = jax.vmap(one, in_axes=(0, None, 0))
    return jax.vmap(over_inits, in_axes=(None, 0, None))(params, etas, thresholds)


@eqx.filter_jit
def _initial_quantities(params, static, problem, lanczos_steps, sharpness: bool):
    def one(q):
        e = _excess(q, static, problem)
        s = _sharpness(q, static, problem, lanczos_steps) if sharpness else jnp.nan
        return problem.R_min + e, s

    return jax.vmap(one)(params)


# --- inputs ------------------------------------------------------------------------------


def batch(models: DeepLinear | Sequence[DeepLinear]) -> DeepLinear:
    """Stack networks of equal shapes into one network whose leaves have a leading axis.

    A single unbatched network becomes a batch of one; a batch is returned as it is
    (recognized by `p` having two dimensions).
    """
    if isinstance(models, DeepLinear):
        if jnp.ndim(models.p) == 2:
            return models
        return jax.tree.map(lambda x: x[None], models)
    models = list(models)
    if not models:
        raise ValueError("models is empty: give at least one network.")
    if not all(isinstance(m, DeepLinear) for m in models):
        raise ValueError("models must be networks (gflow.models.MLP or Residual).")
    first = jax.tree.structure(models[0])
    shapes = [x.shape for x in jax.tree.leaves(models[0])]
    for i, m in enumerate(models[1:], 1):
        if jax.tree.structure(m) != first or [x.shape for x in jax.tree.leaves(m)] != shapes:
            raise ValueError(
                f"models[{i}] differs in kind or widths from models[0]; a batch needs equal shapes."
            )
        if not np.array_equal(np.asarray(m.p), np.asarray(models[0].p)):
            raise ValueError(
                f"models[{i}] has another output vector p than models[0]; GD batches share the "
                "fixed parts of the network, so run networks with different p separately."
            )
    return jax.tree.map(lambda *xs: jnp.stack(xs), *models)


def unbatch(models: DeepLinear) -> list[DeepLinear]:
    """The networks of a batch made by [`batch`][], as a list."""
    n = models.p.shape[0]
    return [jax.tree.map(lambda x: x[i], models) for i in range(n)]


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1; got {value!r}.")
    return int(value)


def _per_step_size(value, n: int, name: str, default=None) -> list[int]:
    if value is None:
        return [default] * n
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return [_positive_int(value, name)] * n
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"{name} must be an integer ≥ 1 or one per step size; got {value!r}.")
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} must be one integer or one per step size ({n}); got {len(values)}.")
    return [_positive_int(v, f"{name}[{i}]") for i, v in enumerate(values)]


def _step_sizes(step_sizes) -> np.ndarray:
    etas = np.atleast_1d(np.asarray(step_sizes, dtype=np.float64))
    if etas.ndim != 1 or etas.size == 0:
        raise ValueError(f"step_sizes must be a non-empty list of numbers; got {step_sizes!r}.")
    if not np.all(np.isfinite(etas)) or np.any(etas <= 0):
        raise ValueError(f"every step size must be a finite positive number; got {etas.tolist()}.")
    if len(set(etas.tolist())) != etas.size:
        raise ValueError(f"step sizes must be distinct; got {etas.tolist()}.")
    return etas


# --- bounds ------------------------------------------------------------------------------


def _bounds(problem: Problem, model: DeepLinear) -> dict[str, float]:
    """S_lower, S_upper, η_crit = 2/S_lower, … from `gflow.theory.bounds` (theory.md §2–3)."""
    from . import theory

    p = np.asarray(model.p)
    p_norm = float(np.linalg.norm(p[0] if p.ndim == 2 else p))
    return dict(theory.bounds(problem, model.depth, p_norm), p_norm=p_norm)


# --- the grid ----------------------------------------------------------------------------


def run(
    models: DeepLinear | Sequence[DeepLinear],
    problem: Problem,
    step_sizes: float | Sequence[float],
    steps: int | Sequence[int],
    *,
    record_every: int | Sequence[int] | None = None,
    observables: Sequence[str] = DEFAULT_OBSERVABLES,
    final_sharpness: bool = True,
    initial_sharpness: bool = False,
    record_weights: bool = False,
    tol: float = 1e-8,
    diverge_factor: float = 1e6,
    diverge_above: float | None = None,
    lanczos_steps: int = 40,
    seeds: Sequence | None = None,
) -> xr.Dataset:
    """GD from every initialization at every step size, vectorized.

    Step sizes that share a step count run as one compiled scan under `vmap` over
    (step sizes × initializations); each distinct step count compiles once.

    **Arguments:**

    - `models`: one network, a list of networks of equal shapes, or a batch from [`batch`][].
    - `problem`: the regression problem.
    - `step_sizes`: η values (distinct, positive).
    - `steps`: number of GD steps, one for all or one per step size.
    - `record_every`: steps between records (one or one per step size); default about 100
      records per run. The last step is always recorded.
    - `observables`: registry names recorded (ask for "sharpness" only when needed: each
      record costs a Lanczos run).
    - `final_sharpness`, `initial_sharpness`: Lanczos sharpness at the end / start of each run.
    - `record_weights`: also record the flat trainable parameters (variable `weights`).
    - `tol`: a run is "converged" when its final excess risk R − R_min ≤ tol.
    - `diverge_factor`, `diverge_above`: a run diverges when its risk is non-finite or above
      `diverge_above` (default `diverge_factor`·R(W(0)) for each initialization).
    - `lanczos_steps`: Lanczos steps of the end-of-run sharpness.
    - `seeds`: labels of the initializations (coordinate `seed`; default 0, 1, …).

    **Returns:** an `xarray.Dataset` on dims (`step_size`, `seed`, `record`, …) with the
    coordinates `step` and `time` = η·step on (`step_size`, `record`) (NaN where a step size
    has fewer records); per run `status`, `diverged_at_step` (−1: never),
    `final_excess_risk`, `final_distance_to_pi_star`, `final_sharpness` (NaN when
    diverged), `weights_final`; per initialization `initial_risk`, `weights_initial`; and
    in `attrs` the problem's constants, S_lower, S_upper, η_crit = 2/S_lower, settings and
    wall time.
    """
    etas = _step_sizes(step_sizes)
    step_counts = _per_step_size(steps, etas.size, "steps")
    everies = _per_step_size(record_every, etas.size, "record_every")
    everies = [max(1, s // 100) if r is None else min(r, s) for r, s in zip(everies, step_counts)]
    if not (isinstance(tol, int | float) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number ≥ 0; got {tol!r}.")
    if not (isinstance(diverge_factor, int | float) and diverge_factor > 1):
        raise ValueError(f"diverge_factor must be a number > 1; got {diverge_factor!r}.")
    if diverge_above is not None and not (diverge_above > 0):
        raise ValueError(f"diverge_above must be positive; got {diverge_above!r}.")
    _positive_int(lanczos_steps, "lanczos_steps")
    try:
        observables = obs.get(list(observables))
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    if len({o.name for o in observables}) != len(observables):
        raise ValueError("observables are listed twice.")
    batched = batch(models)
    n_init = batched.p.shape[0]
    one = unbatch_first(batched)
    check_input_width(one, problem.d)
    seeds = np.arange(n_init) if seeds is None else np.asarray(seeds)
    if seeds.shape != (n_init,):
        raise ValueError(f"seeds must have one label per network ({n_init}); got {seeds.shape}.")

    params, static = eqx.partition(batched, trainable(batched))
    static = jax.tree.map(lambda x: x[0], static)
    start = _time.perf_counter()
    risk0, sharp0 = _initial_quantities(params, static, problem, lanczos_steps, initial_sharpness)
    risk0 = np.asarray(risk0)
    thresholds = np.full(n_init, diverge_above) if diverge_above is not None else diverge_factor * risk0

    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(step_counts, everies)):
        groups.setdefault(key, []).append(i)
    results = {}
    for (n_steps, every), idx in groups.items():
        opts = (n_steps, every, observables, record_weights, final_sharpness, lanczos_steps)
        out = _grid(params, static, problem, jnp.asarray(etas[idx]), jnp.asarray(thresholds), opts)
        out = jax.tree.map(np.asarray, out)
        for j, i in enumerate(idx):
            results[i] = jax.tree.map(lambda x: x[j], out)
    wall = _time.perf_counter() - start

    n_rec = max(_record_steps(s, e).size for s, e in zip(step_counts, everies))
    step_coord = np.full((etas.size, n_rec), np.nan)
    for i, (s, e) in enumerate(zip(step_counts, everies)):
        ks = _record_steps(s, e)
        step_coord[i, : ks.size] = ks

    def stacked(get):
        return np.stack([get(results[i]) for i in range(etas.size)])

    data = {}
    for o in list(observables) + ([_WEIGHTS] if record_weights else []):
        name = o.name
        rows = []
        for i in range(etas.size):
            v = results[i][4][name]  # (seed, record, ...)
            pad = np.full((v.shape[0], n_rec - v.shape[1], *v.shape[2:]), np.nan)
            rows.append(np.concatenate([v, pad], axis=1))
        data[name] = (("step_size", "seed", "record", *o.dims), np.stack(rows), {"description": o.description})

    diverged_at = stacked(lambda r: r[1]).astype(np.int64)
    final = {k: stacked(lambda r, k=k: r[3][k]) for k in results[0][3]}
    mid = stacked(lambda r: r[2])
    status = np.full(diverged_at.shape, "not_converged", dtype=object)
    with np.errstate(invalid="ignore", divide="ignore"):
        status[final["excess_risk"] >= 0.1 * mid] = "stalled"
    status[final["excess_risk"] <= tol] = "converged"
    status[diverged_at >= 0] = "diverged"
    data["status"] = (("step_size", "seed"), status.astype(str))
    data["diverged_at_step"] = (("step_size", "seed"), diverged_at)
    data["final_excess_risk"] = (("step_size", "seed"), final["excess_risk"])
    data["final_distance_to_pi_star"] = (("step_size", "seed"), final["distance_to_pi_star"])
    data["final_sharpness"] = (
        ("step_size", "seed"),
        final["sharpness"] if final_sharpness else np.full(diverged_at.shape, np.nan),
    )
    data["steps"] = (("step_size",), np.asarray(step_counts, np.int64))
    data["record_every"] = (("step_size",), np.asarray(everies, np.int64))
    data["initial_risk"] = (("seed",), risk0)
    data["initial_sharpness"] = (("seed",), np.asarray(sharp0, np.float64) * np.ones(n_init))
    final_params = jax.tree.map(lambda *xs: np.stack(xs), *[results[i][0] for i in range(etas.size)])
    data["weights_initial"] = (("seed", "layer", "row", "col"), trajectory.weights_array(eqx.combine(params, static)))
    data["weights_final"] = (("step_size", "seed", "layer", "row", "col"), trajectory.weights_array(eqx.combine(final_params, static)))
    data["p"] = (("output",), np.asarray(batched.p[0], np.float64))
    data["pi_star"] = (("feature",), np.asarray(problem.pi_star))

    L = one.depth
    coords = dict(
        step_size=("step_size", etas),
        seed=("seed", seeds),
        record=("record", np.arange(n_rec)),
        step=(("step_size", "record"), step_coord),
        time=(("step_size", "record"), step_coord * etas[:, None]),
        layer=("layer", np.arange(1, L + 1)),
        interface=("interface", np.arange(1, L)),
        feature=("feature", np.arange(1, problem.d + 1)),
    )
    attrs = dict(problem.constants())
    attrs.update(_bounds(problem, one))
    attrs.update(
        kind=trajectory.model_kind(one),
        depth=L,
        widths=list(one.widths),
        method="gradient_descent",
        tol=tol,
        diverge_factor=diverge_factor,
        diverge_above=diverge_above,
        lanczos_steps=lanczos_steps,
        observables=[o.name for o in observables],
        wall_time_s=wall,
    )
    attrs.update(trajectory.provenance())
    ds = xr.Dataset(data, coords=coords)
    ds.attrs = {k: trajectory._attr(v) for k, v in attrs.items()}
    return ds


_WEIGHTS = obs.Observable("weights", lambda m, p, i: None, ("param",), "flat trainable parameters")


def _record_steps(steps: int, every: int) -> np.ndarray:
    """The steps recorded by `descend`: 0, r, 2r, … ≤ steps, then `steps` if not among them."""
    ks = np.arange(steps // every + 1) * every
    return ks if ks[-1] == steps else np.append(ks, steps)


def unbatch_first(models: DeepLinear) -> DeepLinear:
    return jax.tree.map(lambda x: x[0], models)


def model_from(ds: xr.Dataset, step_size: float | None = None, seed=None, which: str = "final") -> DeepLinear:
    """Rebuild one network of a GD Dataset: the final one of run (`step_size`, `seed`), or
    the initial one of `seed` (`which="initial"`). `None` picks the first."""
    W = ds[f"weights_{which}"]
    W = W.sel(seed=seed) if seed is not None else W.isel(seed=0)
    if which == "final":
        W = W.sel(step_size=step_size) if step_size is not None else W.isel(step_size=0)
    return trajectory.network(W.values, ds)


# --- critical step size -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CriticalStepSize:
    """The largest η from which GD converges, found numerically, beside its predictions.

    **Fields:**

    - `eta`: the estimate (midpoint of the final bracket).
    - `lower`, `upper`: the bracket: GD converges at `lower` and fails at `upper`.
    - `eta_theory`: 2/S_lower (above it GD cannot converge; theory.md §3).
    - `eta_flow`: 2/S(W_GF), with W_GF the minimizer gradient flow reaches from the same
      initialization (NaN when not computed).
    - `evaluations`: the (η, status) pairs tried, in order.
    - `steps`: the GD step budget that defines "converges".
    """

    eta: float
    lower: float
    upper: float
    eta_theory: float
    eta_flow: float
    evaluations: tuple[tuple[float, str], ...]
    steps: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def critical_step_size(
    model: DeepLinear,
    problem: Problem,
    steps: int,
    *,
    rtol: float = 1e-2,
    tol: float = 1e-8,
    per_round: int = 7,
    max_rounds: int = 30,
    flow_options=None,
) -> CriticalStepSize:
    """The largest η for which GD from `model` converges within `steps` steps.

    Bracketing first (from η = 2/S_lower, halving until a run converges and doubling until
    one fails), then multisection: each round runs `per_round` step sizes spread
    geometrically inside the bracket as one vectorized call and keeps the interval below the
    first failure, until upper/lower − 1 ≤ `rtol`. Convergence need not be monotone in η
    near the threshold; the result is the edge of the first failure above a converging η.

    **Arguments:**

    - `model`, `problem`: the initialization and the data.
    - `steps`: GD step budget (a run converges when R − R_min ≤ `tol` after it).
    - `rtol`: relative width of the final bracket.
    - `per_round`: step sizes per round (1 is plain bisection).
    - `max_rounds`: cap on bracketing and refinement rounds each.
    - `flow_options`: a `FlowOptions` for the GF run that gives 2/S(W_GF); `None` skips it.
    """
    steps = _positive_int(steps, "steps")
    per_round = _positive_int(per_round, "per_round")
    if not (isinstance(rtol, int | float) and 0 < rtol < 1):
        raise ValueError(f"rtol must lie in (0, 1); got {rtol!r}.")
    if isinstance(model, DeepLinear) and jnp.ndim(model.p) == 2:
        raise ValueError("critical_step_size takes one network, not a batch.")
    bounds = _bounds(problem, model)
    tried: list[tuple[float, str]] = []

    def statuses(etas):
        ds = run(model, problem, etas, steps, record_every=steps, observables=(), final_sharpness=False, tol=tol)
        st = [str(s) for s in ds.status.values[:, 0]]
        tried.extend(zip(map(float, etas), st))
        return [s == "converged" for s in st]

    lo, hi = None, None
    eta = bounds["eta_crit"]
    for _ in range(max_rounds):  # find a failing η
        if not statuses([eta])[0]:
            hi = eta
            break
        lo, eta = eta, 2 * eta
    if hi is None:
        raise RuntimeError(f"GD still converges at η = {eta / 2:.3g}; no failing step size found.")
    eta = hi / 2
    while lo is None:
        if len(tried) > 2 * max_rounds:
            raise RuntimeError(f"GD fails at every η ≥ {eta:.3g} within {steps} steps; raise steps.")
        if statuses([eta])[0]:
            lo = eta
        else:
            hi, eta = eta, eta / 2
    for _ in range(max_rounds):
        if hi / lo - 1 <= rtol:
            break
        grid = lo * (hi / lo) ** (np.arange(1, per_round + 1) / (per_round + 1))
        ok = statuses(grid)
        first_fail = next((j for j, c in enumerate(ok) if not c), None)
        if first_fail is None:
            lo = float(grid[-1])
        else:
            hi = float(grid[first_fail])
            lo = float(grid[first_fail - 1]) if first_fail > 0 else lo
    eta_flow = math.nan
    if flow_options is not None:
        from . import flow

        sol = flow.dense_solution(model, problem, flow_options)
        final = sol.model_at(sol.solution.ts[-1])
        eta_flow = 2.0 / float(obs.sharpness(final, problem))
    return CriticalStepSize(
        eta=math.sqrt(lo * hi),
        lower=lo,
        upper=hi,
        eta_theory=bounds["eta_crit"],
        eta_flow=eta_flow,
        evaluations=tuple(tried),
        steps=steps,
    )
