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
from .plan import ChunkSpec

_FINALS = ("final_excess_risk", "final_distance_to_pi_star", "final_sharpness")
_INITIALS = ("initial_risk", "initial_sharpness")
_CONSTANTS = ("S_lower", "S_upper", "eta_crit", "S_reference_8LLam", "a", "lam", "Lam", "R_min", "p_norm")
_GF_OBSERVABLES = ("excess_risk", "distance_to_pi_star", "sharpness")


def run_chunk(spec: ChunkSpec) -> xr.Dataset:
    """Run one chunk: GD at every step size from every initialization of its points
    (one `gflow.descent.run` per set of seeds), and GF from every initialization.

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
    finals = {k: np.full((P, E, S), np.nan) for k in _FINALS}
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
    Same shapes within a chunk: `gflow.solve` compiles once and is reused."""
    scalar = [o.name for o in obs.get(list(gd_observables)) if not o.dims]
    names = list(dict.fromkeys([*_GF_OBSERVABLES, *scalar]))
    P, S = len(points), len(seeds)
    values = {n: np.full((P, S), np.nan) for n in names}
    status = np.full((P, S), "", object)
    t_final = np.full((P, S), np.nan)
    for p, pt in enumerate(points):
        options = dataclasses.replace(pt.flow.options(), saves=2, spacing="linear", t_first=None)
        for j, s in enumerate(seeds):
            ds = flow.solve(nets[p][s], prob, options, names)
            status[p, j] = ds.attrs["status"]
            t_final[p, j] = ds.attrs["t_final"]
            for n in names:
                values[n][p, j] = float(ds[n].values[-1])
    out = {"gf_status": (("point", "seed"), status.astype(str)), "gf_t_final": (("point", "seed"), t_final)}
    out.update({f"gf_final_{n}": (("point", "seed"), v) for n, v in values.items()})
    return out
