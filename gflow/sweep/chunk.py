"""One chunk of a sweep: GD at every step size from every initialization of its points,
and the gradient-flow point (η → 0) from the same initializations.

[`run_chunk`][] is a pure function of its picklable [`ChunkSpec`][], so a chunk runs the
same in this process or on a Dask worker.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import xarray as xr

from .. import descent, flow
from .. import observables as obs
from .. import scenario as scen
from ..dynamics import FINITE_STEP
from .gf import gf_point
from .plan import ChunkSpec

_INITIALS = ("initial_risk", "initial_sharpness")
_CONSTANTS = ("S_lower", "S_upper", "eta_crit", "S_reference_8LLam", "a", "lam", "Lam", "R_min", "p_norm")


def run_chunk(spec: ChunkSpec) -> xr.Dataset:
    """Run one chunk: GD at every step size from every initialization of its points
    (one `gflow.descent.run` per set of seeds), and GF from every initialization (one
    vmapped solve, `gflow.sweep.gf`).

    Pure: the same spec gives the same Dataset, on any process (importing gflow enables
    float64). Dims `point` (grid positions), `step_size`, `seed`, `record`; a run that
    is not part of the grid (fewer repetitions at a step size) has status "".
    """
    t_start = time.perf_counter()
    points = [scen.from_dict(raw, spec.source) for raw in spec.points]
    prob = points[0].build_problem()
    sec = points[0].descent
    etas = np.asarray(sec.step_sizes, np.float64)
    steps = sec.steps if isinstance(sec.steps, list) else [sec.steps] * etas.size
    seeds = list(dict.fromkeys(s for ss in spec.seeds for s in ss))
    nets = [_networks(pt, prob.d, seeds) for pt in points]
    calls = _descent_calls(nets, prob, sec, etas, steps, spec.seeds)
    data, step = _gd_variables(calls, len(points), etas, steps, seeds, sec.observables)
    if sec.gf:
        data.update(_gf_point(points, nets, prob, seeds, sec.observables))
    for dynamics in FINITE_STEP:
        if getattr(sec, dynamics):
            data.update(_finite_step_point(dynamics, points, nets, prob, seeds, etas, steps))
    attrs = calls[0][2].attrs
    for k in _CONSTANTS:
        data[k] = (("point",), np.full(len(points), float(attrs[k])))
    data["depth"] = (("point",), np.full(len(points), int(attrs["depth"]), np.int64))
    coords = dict(
        point=("point", np.asarray(spec.index, np.int64)),
        step_size=("step_size", etas),
        seed=("seed", np.asarray(seeds, np.int64)),
    )
    if step is not None:
        coords.update(record=("record", np.arange(step.shape[1])), step=(("step_size", "record"), step),
                      time=(("step_size", "record"), step * etas[:, None]))
    ds = xr.Dataset(data, coords=coords)
    ds.attrs = dict(chunk=spec.id, runs=spec.runs, wall_time_s=time.perf_counter() - t_start)
    return ds


def _networks(point: scen.Scenario, d: int, seeds: Sequence[int]) -> dict:
    """The initializations of a point, one per seed (a residual network's p comes from the
    scenario's own seed, fixed across repetitions like the data: `Scenario.build_model`)."""
    return {s: point.build_model(d, s) for s in seeds}


def _descent_calls(nets, prob, sec, etas, steps, chunk_seeds) -> list[tuple]:
    """One `gflow.descent.run` per set of seeds, over every point of the chunk and the step
    sizes that use those seeds: a list of (seeds, step-size indices, GD Dataset)."""
    by_seeds: dict[tuple[int, ...], list[int]] = {}
    for i, ss in enumerate(chunk_seeds):
        by_seeds.setdefault(tuple(ss), []).append(i)
    calls = []
    for ss, idx in by_seeds.items():
        models = [net[s] for net in nets for s in ss]
        out = descent.run(models, prob, etas[idx], [steps[i] for i in idx], record_every=sec.record_every,
                          observables=sec.observables, final_sharpness=True, initial_sharpness=True)
        calls.append((ss, idx, out))
    return calls


def _per_run(v, n_etas: int, n_points: int, n_seeds: int) -> np.ndarray:
    """(step_size, point·seed, …) → (point, step_size, seed, …)."""
    v = np.asarray(v).reshape(n_etas, n_points, n_seeds, *v.shape[2:])
    return np.moveaxis(v, 1, 0)


def _gd_variables(calls, P: int, etas, steps, seeds, observables) -> tuple[dict, np.ndarray | None]:
    """The descent calls' results on the chunk's (point, step_size, seed[, record, …]) grid,
    as Dataset variables, and the GD step of each record (step_size, record), None when
    nothing is recorded. A run that is not part of the grid keeps status "" and NaN."""
    E, S = etas.size, len(seeds)
    col = {s: j for j, s in enumerate(seeds)}
    R = max(out.sizes["record"] for _, _, out in calls)
    status = np.full((P, E, S), "", object)
    div = np.full((P, E, S), -1, np.int64)
    finals = {k: np.full((P, E, S), np.nan) for k in calls[0][2].data_vars if k.startswith("final_")}
    init = {k: np.full((P, S), np.nan) for k in _INITIALS}
    step = np.full((E, R), np.nan)
    records: dict[str, tuple] = {}
    for ss, idx, out in calls:
        cols = [col[s] for s in ss]
        r = out.sizes["record"]
        step[idx, :r] = out.step.values
        sel = (slice(None), np.asarray(idx)[:, None], np.asarray(cols)[None, :])
        status[sel] = _per_run(out.status.values, len(idx), P, len(ss))
        div[sel] = _per_run(out.diverged_at_step.values, len(idx), P, len(ss))
        for k in finals:
            finals[k][sel] = _per_run(out[k].values, len(idx), P, len(ss))
        for k in init:
            init[k][:, cols] = np.asarray(out[k].values).reshape(P, len(ss))
        for name in observables:
            v = out[name]
            if name not in records:
                records[name] = (v.dims[3:], np.full((P, E, S, R, *v.shape[3:]), np.nan), v.attrs)
            records[name][1][(*sel, slice(0, r))] = _per_run(v.values, len(idx), P, len(ss))
    last = np.array([np.flatnonzero(np.isfinite(row)).max() for row in step])
    data = {
        "status": (("point", "step_size", "seed"), status.astype(str)),
        "diverged_at_step": (("point", "step_size", "seed"), div),
        **{k: (("point", "step_size", "seed"), v) for k, v in finals.items()},
        **{k: (("point", "seed"), v) for k, v in init.items()},
        "steps": (("step_size",), np.asarray(steps, np.int64)),
    }
    for name, (dims, v, a) in records.items():
        data[name] = (("point", "step_size", "seed", "record", *dims), v, a)
        if not dims and f"final_{name}" not in data:
            data[f"final_{name}"] = (("point", "step_size", "seed"), v[:, np.arange(E), :, last].transpose(1, 0, 2))
    return data, (step if records else None)


def _gf_point(points, nets, prob, seeds, gd_observables) -> dict:
    """GF from every initialization to the end of [flow]'s horizon; only the end is kept.
    Every (point, seed) of the chunk in one vmapped solve (`gflow.sweep.gf`)."""
    scalar = [o.name for o in obs.get(list(gd_observables)) if not o.dims]
    network = nets[0][seeds[0]]  # GD's final quantities: excess risk and distance, or ‖∇R‖² and risk
    names = list(dict.fromkeys([*descent.final_quantities(network), "sharpness", *scalar]))
    P, S = len(points), len(seeds)
    options = [dataclasses.replace(pt.flow.options(), saves=2, spacing="linear", t_first=None) for pt in points]
    end = gf_point([nets[p][s] for p in range(P) for s in seeds], prob, [o for o in options for _ in seeds], names)
    out = {"gf_status": (("point", "seed"), end["status"].reshape(P, S).astype(str)),
           "gf_t_final": (("point", "seed"), end["t_final"].reshape(P, S))}
    out.update({f"gf_final_{n}": (("point", "seed"), end[n].reshape(P, S)) for n in names})
    return out


def _finite_step_point(dynamics: str, points, nets, prob, seeds, etas, steps) -> dict:
    """The central or the modified flow (`dynamics`) from every initialization at every η,
    over GD's horizon steps·η, under [flow]'s settings: GD's final sharpness and risk
    predicted without its steps (theory.md §8, §11). Only the end is kept, but the solve
    saves on [flow]'s grid: the same program as `gflow run`'s flows (one compilation per
    shape, every η and point). The central flow's sharpness is λ₁ at its end (held at 2/η
    on the edge), and it adds its predicted risk R + ½⟨X, ∇²R⟩."""
    network = nets[0][seeds[0]]
    names = list(descent.final_quantities(network))
    central = dynamics == "central"
    recorded = [*names, "sharpness", "predicted_risk"] if central else [*names, "sharpness"]
    P, E, S = len(points), etas.size, len(seeds)
    values = {n: np.full((P, E, S), np.nan) for n in recorded}
    status = np.full((P, E, S), "", object)
    for p, pt in enumerate(points):
        for i, eta in enumerate(etas):
            options = dataclasses.replace(pt.flow.options(), dynamics=dynamics, step_size=float(eta),
                                          t_max=float(steps[i] * eta), t_first=None, clock="plain")
            for j, s in enumerate(seeds):
                ds = flow.solve(nets[p][s], prob, options, names if central else [*names, "sharpness"])
                status[p, i, j] = ds.attrs["status"]
                for n in values:
                    values[n][p, i, j] = float(ds["edge_sharpness" if central and n == "sharpness" else n].values[-1])
    dims = ("point", "step_size", "seed")
    out = {f"{dynamics}_status": (dims, status.astype(str))}
    out.update({f"{dynamics}_final_{n}": (dims, v) for n, v in values.items()})
    return out
