"""Sweeps: a scenario's `[sweep]` grid, run as vectorized chunks, resumable, in one
process or on a Dask cluster.

How a sweep scenario reads:

- `[sweep]`: dotted keys ("model.init.scale", "model.depth", "data.seed", …), one list of
  values each; every combination is a *grid point* and a dimension of the result.
- `[descent]`: the GD runs of every point: `step_sizes` (a dimension, vectorized),
  `steps` (one or one per step size), `record_every`, `observables` (recorded along the
  run; their last record is also kept as `final_<name>`).
- Repetitions (the `seed` dimension) are initializations; the data stay fixed (`data.seed`):
  `descent.seeds` (explicit), or `descent.reps` (seeds `seed`, `seed`+1, …; one count or
  one per step size, as the paper's 80 repetitions at η = 0.2), or a `seed` key in
  `[sweep]`; without any, the scenario's `seed` alone. Give only one of the three.
- `descent.gf` (default true): the gradient-flow point η → 0, integrated under `[flow]`
  from every initialization (only its end is kept: `gf_final_<name>`).
- A residual network's output vector p is fixed across repetitions, like the data: drawn
  from the scenario's `seed` (or given as `model.p`); the repetitions vary V only.

Execution is by **chunks**: points that share data and shapes (they differ only in the
initialization scale) are batched into one `gflow.descent.run` call per set of seeds, cut
into chunks of about `chunk_runs` GD runs of equal size (equal shapes: one compilation).
A [`ChunkSpec`][] is picklable and [`run_chunk`][] is a pure function of it, so chunks can
be shipped to Dask workers. Each finished chunk is written atomically as
`chunks/<id>.nc`, `id` a hash of what the chunk computes; a rerun skips the chunks whose
file exists, and the final combine reads every chunk file in plan order.

A sweep folder holds `scenario.toml`, `chunks/`, `sweep.nc` (one Dataset, the swept
parameters as coordinates), `runs.csv` (one row per GD run) and `figures/*.png`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
import numpy as np
import xarray as xr

from . import files, plots, trajectory
from . import scenario as scen
from .scenario import ScenarioError

CHUNK_RUNS = 400
"""Target number of GD runs (step sizes × seeds × points) per chunk."""

FORMAT = 1
"""Version of the chunk layout; part of every chunk id."""

WORKER_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
"""Environment of local Dask workers: one thread each, so N workers fill N cores."""

_INIT_KEYS = ("model.init.scale", "model.init.s")
_RESERVED = {"point", "step_size", "seed", "record", "step", "time", "layer", "interface", "feature"}
_GF_OBSERVABLES = ("excess_risk", "distance_to_pi_star", "sharpness")


# --- the plan ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChunkSpec:
    """What one chunk computes: everything [`run_chunk`][] needs, and nothing else.

    **Fields:**

    - `points`: the grid points, each a validated scenario as a plain dict (no sweep).
    - `index`: their positions in the grid (row-major over the sweep keys).
    - `seeds`: the initialization seeds of each step size.
    - `source`: the scenario file (relative data and weight paths are resolved against it).
    """

    points: tuple[dict, ...]
    index: tuple[int, ...]
    seeds: tuple[tuple[int, ...], ...]
    source: str | None = None

    @property
    def id(self) -> str:
        """A stable hash of the computation (not of where its points sit in the grid)."""
        text = json.dumps(dict(format=FORMAT, points=self.points, seeds=self.seeds), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def runs(self) -> int:
        return len(self.points) * sum(len(s) for s in self.seeds)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A sweep cut into chunks: the grid's dims (short names of the sweep keys), their
    keys and values, the step sizes, all seeds, and the chunks in a fixed order."""

    name: str
    dims: tuple[str, ...]
    keys: tuple[str, ...]
    values: tuple[tuple, ...]
    step_sizes: tuple[float, ...]
    seeds: tuple[int, ...]
    chunks: tuple[ChunkSpec, ...]

    @property
    def runs(self) -> int:
        return sum(c.runs for c in self.chunks)


def plan(scenario: scen.Scenario, chunk_runs: int = CHUNK_RUNS) -> Plan:
    """Expand and validate a sweep scenario and cut it into chunks (nothing is computed).

    Raises `ScenarioError` for a bad sweep (unknown key, empty or repeated values, a
    `[descent]` key swept, seeds given twice, no `[descent]` section).
    """
    where = scenario.source or scenario.name
    sec = scenario.descent
    if sec is None:
        raise ScenarioError(f"{where}: a sweep needs a [descent] section (step_sizes, steps)")
    sweep = dict(scenario.sweep or {})
    for key, values in sweep.items():
        if key.split(".")[0] in ("descent", "name", "sweep"):
            raise ScenarioError(
                f"{where}: sweep.{key}: cannot be swept ([descent] is shared by the grid; "
                "step sizes are already an axis, repetitions are descent.seeds/reps)"
            )
        if not values:
            raise ScenarioError(f"{where}: sweep.{key}: give at least one value")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ScenarioError(f"{where}: sweep.{key}: values must be distinct")
    seeds = _seeds(scenario, sweep.pop("seed", None), where)
    reduced = scenario.model_copy(update={"sweep": sweep or None})
    points = [s for _, s in scen.expand(reduced)]
    raws = [s.model_dump(exclude={"sweep"}, exclude_none=True) for s in points]

    groups: dict[str, list[int]] = {}
    for i, raw in enumerate(raws):
        groups.setdefault(_shape_key(raw), []).append(i)
    for idx in groups.values():
        points[idx[0]].validate_inputs()  # data and shapes: a ScenarioError now, not in a chunk
    source = os.path.abspath(scenario.source) if scenario.source else None
    per_point = sum(len(s) for s in seeds)
    chunks = []
    for idx in groups.values():
        n = _chunk_count(len(idx), math.ceil(len(idx) * per_point / max(1, chunk_runs)))
        for part in np.array_split(np.asarray(idx), n):
            chunks.append(ChunkSpec(tuple(raws[i] for i in part), tuple(int(i) for i in part), seeds, source))
    chunks.sort(key=lambda c: c.index[0])
    keys = tuple(sweep)
    all_seeds = tuple(dict.fromkeys(s for ss in seeds for s in ss))
    return Plan(scenario.name, _dim_names(keys), keys, tuple(tuple(sweep[k]) for k in keys),
                tuple(sec.step_sizes), all_seeds, tuple(chunks))


def _seeds(scenario: scen.Scenario, swept, where: str) -> tuple[tuple[int, ...], ...]:
    sec = scenario.descent
    n = len(sec.step_sizes)
    given = [name for name, v in (("sweep.seed", swept), ("descent.seeds", sec.seeds), ("descent.reps", sec.reps))
             if v is not None]
    if len(given) > 1:
        raise ScenarioError(f"{where}: {' and '.join(given)}: give the repetitions one way only")
    if swept is not None:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in swept):
            raise ScenarioError(f"{where}: sweep.seed: seeds must be integers")
        return (tuple(swept),) * n
    if sec.seeds is not None:
        if len(set(sec.seeds)) != len(sec.seeds):
            raise ScenarioError(f"{where}: descent.seeds: seeds must be distinct")
        return (tuple(sec.seeds),) * n
    if sec.reps is not None:
        reps = sec.reps if isinstance(sec.reps, list) else [sec.reps] * n
        return tuple(tuple(scenario.seed + k for k in range(r)) for r in reps)
    return ((scenario.seed,),) * n


def _shape_key(raw: dict) -> str:
    """Points with equal keys share data and shapes: only the init scale differs."""
    raw = json.loads(json.dumps(raw))
    raw["model"]["init"].pop("scale", None)
    raw["model"]["init"].pop("s", None)
    return json.dumps(raw, sort_keys=True)


def _chunk_count(points: int, wanted: int) -> int:
    """The smallest divisor of `points` ≥ `wanted` (equal chunks compile once)."""
    wanted = min(max(1, wanted), points)
    return next(k for k in range(wanted, points + 1) if points % k == 0)


def _dim_names(keys: Sequence[str]) -> tuple[str, ...]:
    short = [k.split(".")[-1] for k in keys]
    return tuple(
        k.replace(".", "_") if (s in _RESERVED or short.count(s) > 1) else s for k, s in zip(keys, short)
    )


# --- one chunk -------------------------------------------------------------------------------


def run_chunk(spec: ChunkSpec) -> xr.Dataset:
    """Run one chunk: GD at every step size from every initialization of its points
    (one `gflow.descent.run` per set of seeds), and GF from every initialization.

    Pure: the same spec gives the same Dataset, on any process (importing gflow enables
    float64). Dims `point` (grid positions), `step_size`, `seed`, `record`; a run that
    is not part of the grid (fewer repetitions at a step size) has status "".
    """
    from . import descent, flow

    t_start = time.perf_counter()
    points = [scen.from_dict(raw, spec.source) for raw in spec.points]
    first = points[0]
    prob = first.build_problem()
    sec = first.descent
    etas = np.asarray(sec.step_sizes, np.float64)
    steps = sec.steps if isinstance(sec.steps, list) else [sec.steps] * etas.size
    all_seeds = list(dict.fromkeys(s for ss in spec.seeds for s in ss))
    col = {s: j for j, s in enumerate(all_seeds)}
    nets = [_networks(pt, prob.d, all_seeds) for pt in points]
    P, E, S = len(points), etas.size, len(all_seeds)

    by_seeds: dict[tuple[int, ...], list[int]] = {}
    for i, ss in enumerate(spec.seeds):
        by_seeds.setdefault(tuple(ss), []).append(i)
    calls = []
    for ss, idx in by_seeds.items():
        models = [nets[p][s] for p in range(P) for s in ss]
        out = descent.run(models, prob, etas[idx], [steps[i] for i in idx], record_every=sec.record_every,
                          observables=sec.observables, final_sharpness=True, initial_sharpness=True)
        calls.append((ss, idx, out))
    R = max(c[2].sizes["record"] for c in calls)
    attrs = calls[0][2].attrs

    def grid(shape, fill, dtype=np.float64):
        return np.full(shape, fill, dtype=dtype)

    status = grid((P, E, S), "", object)
    div = grid((P, E, S), -1, np.int64)
    finals = {k: grid((P, E, S), np.nan) for k in ("final_excess_risk", "final_distance_to_pi_star", "final_sharpness")}
    init = {k: grid((P, S), np.nan) for k in ("initial_risk", "initial_sharpness")}
    step = grid((E, R), np.nan)
    records: dict[str, tuple] = {}
    for ss, idx, out in calls:
        cols = [col[s] for s in ss]
        r = out.sizes["record"]
        step[idx, :r] = out.step.values

        def per_run(v):  # (step_size, P·seeds, …) → (P, step_size, seeds, …)
            v = np.asarray(v).reshape(len(idx), P, len(ss), *v.shape[2:])
            return np.moveaxis(v, 1, 0)

        sel = (slice(None), np.asarray(idx)[:, None], np.asarray(cols)[None, :])
        status[sel] = per_run(out.status.values)
        div[sel] = per_run(out.diverged_at_step.values)
        for k in finals:
            finals[k][sel] = per_run(out[k].values)
        for k in init:
            init[k][:, cols] = np.asarray(out[k].values).reshape(P, len(ss))
        for name in sec.observables:
            v = out[name]
            if name not in records:
                records[name] = (v.dims[3:], grid((P, E, S, R, *v.shape[3:]), np.nan), v.attrs)
            records[name][1][(*sel, slice(0, r))] = per_run(v.values)
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

    if sec.gf:
        data.update(_gf_point(points, nets, prob, all_seeds, sec.observables, flow))
    for k in ("S_lower", "S_upper", "eta_crit", "S_reference_8LLam", "a", "lam", "Lam", "R_min", "p_norm"):
        data[k] = (("point",), np.full(P, float(attrs[k])))
    data["depth"] = (("point",), np.full(P, int(attrs["depth"]), np.int64))
    coords = dict(
        point=("point", np.asarray(spec.index, np.int64)),
        step_size=("step_size", etas),
        seed=("seed", np.asarray(all_seeds, np.int64)),
    )
    if records:
        coords.update(record=("record", np.arange(R)), step=(("step_size", "record"), step),
                      time=(("step_size", "record"), step * etas[:, None]))
    ds = xr.Dataset(data, coords=coords)
    ds.attrs = dict(chunk=spec.id, runs=spec.runs, wall_time_s=time.perf_counter() - t_start)
    return ds


def _networks(point: scen.Scenario, d: int, seeds: Sequence[int]) -> dict:
    """The initializations of a point, one per seed (a residual network's p comes from the
    scenario's own seed, fixed across repetitions like the data: `Scenario.build_model`)."""
    return {s: point.build_model(d, s) for s in seeds}


def _gf_point(points, nets, prob, seeds, gd_observables, flow) -> dict:
    """GF from every initialization to the end of [flow]'s horizon; only the end is kept.
    Same shapes within a chunk: `gflow.solve` compiles once and is reused."""
    from . import observables as obs

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


# --- combining ---------------------------------------------------------------------------------


def combine(the_plan: Plan, chunks: Sequence[xr.Dataset], scenario_name: str | None = None) -> xr.Dataset:
    """One Dataset from the chunk Datasets (in plan order): the points sorted and reshaped
    into the grid, one dimension per sweep key with its values as coordinate."""
    ds = xr.concat(list(chunks), dim="point", data_vars="minimal", coords="minimal", compat="override",
                   join="outer", combine_attrs="drop")
    ds = ds.sortby("point")
    if the_plan.dims:
        sizes = [len(v) for v in the_plan.values]
        data = {}
        for name, var in ds.data_vars.items():
            if name in the_plan.dims:  # e.g. `depth`, swept: its coordinate says it
                continue
            if "point" not in var.dims:
                data[name] = var
                continue
            var = var.transpose("point", ...)
            dims = (*the_plan.dims, *var.dims[1:])
            data[name] = xr.Variable(dims, var.values.reshape(*sizes, *var.shape[1:]), var.attrs)
        coords = {k: v for k, v in ds.coords.items() if "point" not in v.dims}
        coords.update({d: (d, _coordinate(v)) for d, v in zip(the_plan.dims, the_plan.values)})
        ds = xr.Dataset(data, coords=coords)
    else:
        ds = ds.isel(point=0, drop=True)
    attrs = dict(
        scenario=scenario_name or the_plan.name,
        method="sweep",
        sweep_dims=list(the_plan.dims),
        sweep_keys=list(the_plan.keys),
        chunks=[c.id for c in the_plan.chunks],
    )
    prov = trajectory.provenance()
    prov.pop("created", None)  # keep the combined file a function of its chunks
    attrs.update(prov)
    ds.attrs = {k: trajectory._attr(v) for k, v in attrs.items()}
    return ds


def _coordinate(values: Sequence) -> np.ndarray:
    """Swept values as a coordinate: themselves if scalar, else their JSON text."""
    if all(isinstance(v, int | float | str | bool) for v in values):
        return np.asarray(values)
    return np.asarray([json.dumps(v, sort_keys=True) for v in values])


def runs_table(ds: xr.Dataset):
    """One row per GD run (a `pandas.DataFrame`): the swept values, η, seed, status,
    final quantities, initial sharpness and the GF point of the same initialization."""
    dims = [d for d in json.loads(ds.attrs["sweep_dims"])]
    per_run = [v for v in ds.data_vars if set(ds[v].dims) <= {*dims, "step_size", "seed"}]
    table = ds[per_run].to_dataframe().reset_index()
    table = table[table["status"].astype(str) != ""]
    table.insert(len(dims) + 2, "two_over_eta", 2.0 / table["step_size"])
    cols = [*dims, "step_size", "seed", "two_over_eta"] + [c for c in table.columns
                                                        if c not in {*dims, "step_size", "seed", "two_over_eta"}]
    return table[cols].reset_index(drop=True)


# --- running -----------------------------------------------------------------------------------


@dataclasses.dataclass
class SweepResult:
    """The combined Dataset, its table of runs, and what this call did."""

    dataset: xr.Dataset
    runs: Any
    plan: Plan
    computed: list[str]
    skipped: list[str]
    folder: str | None = None
    figures: list[str] = dataclasses.field(default_factory=list)


def run(
    scenario: scen.Scenario | str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    quiet: bool = True,
    client=None,
    retries: int = 3,
    chunk_runs: int = CHUNK_RUNS,
    on_chunk: Callable[[ChunkSpec, xr.Dataset], None] | None = None,
    figures: bool = True,
    timeout: float | None = None,
) -> SweepResult:
    """Run a sweep; with `out`, write (or resume) its folder.

    **Arguments:**

    - `scenario`: a scenario or its file.
    - `out`: the sweep folder; chunks already there are not recomputed. `None`: in memory.
    - `overwrite`: start afresh, deleting the folder first.
    - `quiet`: no progress messages.
    - `client`: a `distributed.Client`; chunks are submitted to it (with `retries`) and
      written as they complete. `None`: chunks run one after the other in this process.
    - `chunk_runs`: target GD runs per chunk (changing it changes the chunk ids).
    - `on_chunk`: called as `on_chunk(spec, dataset)` after each chunk is computed (and
      written); an exception there stops the sweep, leaving the written chunks.
    - `figures`: write `figures/*.png`.
    - `timeout`: with a `client`, give up (cancelling the rest) after this many seconds.

    Raises `ScenarioError` for a bad scenario and `OutputExistsError` when `out` exists but
    is not a sweep folder, before anything is computed or written.
    """
    from .experiment import OutputExistsError, Progress

    progress = Progress(quiet)
    if not isinstance(scenario, scen.Scenario):
        scenario = scen.load(scenario)
    the_plan = plan(scenario, chunk_runs)
    folder = None if out is None else os.fspath(out)
    chunk_dir = None if folder is None else os.path.join(folder, "chunks")
    if folder is not None:
        if os.path.exists(folder) and not overwrite and not os.path.isdir(chunk_dir):
            raise OutputExistsError(f"{folder}: exists and is not a sweep folder (use --overwrite to replace it)")
        if overwrite and os.path.exists(folder):
            files.remove_folder(folder)
        os.makedirs(chunk_dir, exist_ok=True)
        if scenario.source is not None:
            with files.atomic_path(os.path.join(folder, "scenario.toml")) as tmp:
                shutil.copyfile(scenario.source, tmp)

    def path(spec):
        return os.path.join(chunk_dir, f"{spec.id}.nc")

    todo = [c for c in the_plan.chunks if folder is None or not os.path.isfile(path(c))]
    skipped = [c.id for c in the_plan.chunks if c not in todo]
    progress(f"{the_plan.name}: {the_plan.runs} GD runs in {len(the_plan.chunks)} chunks"
             + (f" ({len(skipped)} already done)" if skipped else "")
             + (" on Dask" if client is not None else ""))
    fresh: dict[str, xr.Dataset] = {}
    computed: list[str] = []

    def finished(spec, ds):
        if folder is not None:
            trajectory.save(ds, path(spec))
        else:
            fresh[spec.id] = ds
        computed.append(spec.id)
        progress(f"{the_plan.name}: chunk {len(skipped) + len(computed)}/{len(the_plan.chunks)} "
                 f"({spec.runs} runs, {ds.attrs['wall_time_s']:.1f} s)")
        if on_chunk is not None:
            on_chunk(spec, ds)

    if client is None:
        for spec in todo:
            finished(spec, run_chunk(spec))
    else:
        _run_on_dask(client, todo, finished, retries, timeout)

    datasets = [fresh[c.id] if c.id in fresh else trajectory.load(path(c)) for c in the_plan.chunks]
    ds = combine(the_plan, datasets, scenario.name)
    table = runs_table(ds)
    result = SweepResult(ds, table, the_plan, computed, skipped, folder)
    if folder is not None:
        trajectory.save(ds, os.path.join(folder, "sweep.nc"))
        with files.atomic_path(os.path.join(folder, "runs.csv")) as tmp:
            table.to_csv(tmp, index=False)
        if figures:
            result.figures = save_figures(ds, os.path.join(folder, "figures"))
        progress(f"{the_plan.name}: wrote {folder}")
    return result


def _run_on_dask(client, todo: Sequence[ChunkSpec], finished, retries: int, timeout: float | None):
    """Submit every chunk; hand each result to `finished` as it completes. Dask reruns a
    chunk whose worker died (and retries a failed one); on an error here, or after
    `timeout` seconds, the rest is cancelled."""
    from distributed import as_completed

    import jax

    client.register_plugin(_ImportGflow(jax.config.jax_compilation_cache_dir), name="gflow-import")
    specs = {}
    futures = []
    for spec in todo:
        fut = client.submit(run_chunk, spec, key=f"gflow-chunk-{spec.id}", retries=retries, pure=False)
        specs[fut.key] = spec
        futures.append(fut)
    try:
        for fut in as_completed(futures, timeout=timeout):
            finished(specs[fut.key], fut.result())
            fut.release()
    finally:
        client.cancel([f for f in futures if not f.done()])


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # Dask is optional
    WorkerPlugin = object


class _ImportGflow(WorkerPlugin):
    """Import gflow on every worker (new ones too) before it runs a chunk: float64 on;
    and share the client's compilation cache, if any."""

    def __init__(self, cache_dir: str | None = None):
        self.cache_dir = cache_dir

    def setup(self, worker):
        import gflow  # noqa: F401

        if self.cache_dir:
            compilation_cache(self.cache_dir)


def compilation_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache, so that the processes of `make paper`
    and the Dask workers compile each program once. Used by `gflow sweep`.

    The folder is `path`, else `$GFLOW_JAX_CACHE`, else ~/.cache/gflow/jax;
    `GFLOW_JAX_CACHE=off` leaves the cache off. Returns the folder (None: off).
    """
    import jax

    path = path or os.environ.get("GFLOW_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gflow", "jax")
    if path == "off":
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


@contextlib.contextmanager
def local_cluster(n_workers: int):
    """A Dask `LocalCluster` on 127.0.0.1 with `n_workers` single-threaded processes (see
    `WORKER_ENV`), and its client."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, env=dict(WORKER_ENV)) as cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def _client_for(args):
    if args.dask is None and args.workers is None:
        yield None
        return
    if args.dask is not None and args.workers is not None:
        raise ScenarioError("give --dask ADDRESS or --workers N, not both")
    if args.workers is not None and args.workers < 1:
        raise ScenarioError(f"--workers must be at least 1; got {args.workers}")
    try:
        from distributed import Client
    except ImportError:
        raise _MissingDask() from None
    if args.workers is not None:
        with local_cluster(args.workers) as client:
            yield client
    else:
        with Client(args.dask) as client:
            yield client


class _MissingDask(RuntimeError):
    pass


def main(args) -> int:
    """`gflow sweep SCENARIO [--out DIR] [--overwrite] [--quiet] [--dask ADDRESS | --workers N]`."""
    from .experiment import default_folder

    scenario = scen.load(args.scenario)
    plan(scenario)  # bad input answers before a cluster starts
    compilation_cache()
    out = args.out if args.out is not None else default_folder(scenario)
    try:
        with _client_for(args) as client:
            result = run(scenario, out, overwrite=args.overwrite, quiet=args.quiet, client=client)
    except _MissingDask:
        print("gflow: error: --dask/--workers need Dask: pip install 'gflow[dask]'", file=sys.stderr)
        return 2
    if not args.quiet:
        counts = result.runs.groupby(["step_size", "status"]).size().unstack(fill_value=0)
        print(counts.to_string())
        print(f"sweep folder: {result.folder}")
    return 0


# --- figures -----------------------------------------------------------------------------------


def _quartiles(v: np.ndarray):
    """Median and quartiles over the last axis, ignoring NaN (all-NaN → NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q = np.nanpercentile(v, [25, 50, 75], axis=-1)
    return q[1], q[0], q[2]


def _band(ax, x, values, color, label, marker="o"):
    """Median line with the interquartile band of `values` (x, seeds)."""
    med, lo, hi = _quartiles(np.asarray(values, np.float64))
    ok = np.isfinite(med)
    if not ok.any():
        return
    ax.plot(np.asarray(x)[ok], med[ok], marker=marker, ms=4, color=color, label=label)
    ax.fill_between(np.asarray(x)[ok], lo[ok], hi[ok], color=color, alpha=0.2, lw=0)


def _color(i: int) -> str:
    """Colors of the step sizes, leaving red and green to the reference lines."""
    return f"C{[0, 1, 4, 5, 6, 7, 8, 9][i % 8]}"


def _one_axes():
    fig, (ax,) = plots.new_figure(width=6.5, height=4.5)
    return fig, ax


def _facets(ds: xr.Dataset, dims: Sequence[str], limit: int = 12):
    """(file suffix, label, sub-Dataset) for each combination of `dims` (at most `limit`)."""
    combos = list(itertools.product(*(range(ds.sizes[d]) for d in dims)))[:limit]
    for combo in combos:
        sel = dict(zip(dims, combo))
        suffix = "".join(f"_{d}-{ds[d].values[i]}" for d, i in sel.items())
        label = ", ".join(f"{d} = {ds[d].values[i]}" for d, i in sel.items())
        yield suffix, label, ds.isel(sel)


def _where(ds, var, status_var="status", ok="converged"):
    return np.where(ds[status_var].values == ok, ds[var].values, np.nan)


def sharpness_vs_init(ds: xr.Dataset, x: str):
    """Sharpness at initialization and after training against the init scale (the paper's
    figure), with 2/η per step size, S_lower = 2La, 8LΛ, and the GF point (η → 0)."""
    fig, (ax,) = plots.new_figure(width=6.5, height=4.5)
    xv = ds[x].values
    sub = ds.transpose(x, "step_size", "seed", ...)
    for i, eta in enumerate(ds.step_size.values):
        s = sub.isel(step_size=i)
        _band(ax, xv, _where(s, "final_sharpness"), _color(i), f"after GD, η = {eta:g}")
        ax.axhline(2 / eta, color=_color(i), ls="--", lw=0.8)
    _band(ax, xv, sub.initial_sharpness.values, "0.5", "at initialization", marker="s")
    if "gf_final_sharpness" in ds:
        _band(ax, xv, _where(sub, "gf_final_sharpness", "gf_status"), "k", "GF (η → 0)", marker="^")
    ax.plot(xv, sub.S_lower.values, color="C3", lw=2, ls=":", label="S_lower = 2La")
    ax.plot(xv, sub.S_reference_8LLam.values, color="C2", lw=1.5, ls="-.", label="8LΛ")
    ax.set(yscale="log", xlabel=x, ylabel="sharpness S",
           title="Sharpness vs initialization (dashed: 2/η; median, quartile band)")
    ax.legend(fontsize=7)
    return fig


def distance_vs_init(ds: xr.Dataset, x: str):
    """Final ‖w − π*‖² (runs that did not diverge) against the init scale, per η and GF."""
    fig, (ax,) = plots.new_figure(width=6.5, height=4.5)
    xv = ds[x].values
    sub = ds.transpose(x, "step_size", "seed", ...)
    for i, eta in enumerate(ds.step_size.values):
        _band(ax, xv, np.maximum(sub.final_distance_to_pi_star.values[:, i] ** 2, 1e-32), _color(i), f"η = {eta:g}")
    if "gf_final_distance_to_pi_star" in ds:
        _band(ax, xv, np.maximum(sub.gf_final_distance_to_pi_star.values ** 2, 1e-32), "k", "GF (η → 0)", "^")
    ax.set(yscale="log", xlabel=x, ylabel="final ‖w − π*‖²", title="Squared distance to π* (diverged runs left out)")
    ax.legend(fontsize=7)
    return fig


def divergence_vs_init(ds: xr.Dataset, x: str):
    """Probability that GD diverges (solid) or fails in any way (dashed) against the scale."""
    fig, (ax,) = plots.new_figure(width=6.5, height=4.5)
    xv = ds[x].values
    st = ds.status.transpose(x, "step_size", "seed", ...).values
    ran = st != ""
    for i, eta in enumerate(ds.step_size.values):
        n = ran[:, i].sum(axis=-1)
        ax.plot(xv, (st[:, i] == "diverged").sum(-1) / n, "o-", color=_color(i), label=f"η = {eta:g}")
        ax.plot(xv, (ran[:, i] & (st[:, i] != "converged")).sum(-1) / n, ":", color=_color(i))
    ax.set(ylim=(-0.05, 1.05), xlabel=x, ylabel="fraction of runs",
           title="GD divergence (solid) and any failure (dotted)")
    ax.legend(fontsize=7)
    return fig


def _lines(ds: xr.Dataset, grid: Sequence[str]):
    """(label, sub-Dataset on step_size × seed) for every grid point (at most 12)."""
    for _, label, sub in _facets(ds, grid):
        yield label or "all", sub.transpose("step_size", "seed", ...)


def _gf_marker(ax, x0, values, color):
    med, lo, hi = _quartiles(np.asarray(values, np.float64)[None, :])
    if np.isfinite(med[0]):
        ax.errorbar([x0], med, yerr=[[med[0] - lo[0]], [hi[0] - med[0]]], fmt="^", color=color, ms=6, capsize=3)


def step_size_figures(ds: xr.Dataset, grid: Sequence[str]) -> dict:
    """Final sharpness, squared distance to π* and failure rate against η, one line per
    grid point; the GF point (η → 0) drawn left of the axis's smallest η; vertical lines
    at η_crit = 2/S_lower = 1/(aL) (‖π*‖ = ‖p‖ = 1)."""
    etas = ds.step_size.values
    x0 = etas.min() / 3
    out = {}
    specs = [("sharpness_vs_step_size", "final sharpness S"),
             ("distance_vs_step_size", "final ‖w − π*‖²"),
             ("divergence_vs_step_size", "fraction of runs that fail")]
    figs = {name: _one_axes() for name, _ in specs}
    lines = list(_lines(ds, grid))
    cmap = matplotlib.colormaps["viridis"]
    for k, (label, sub) in enumerate(lines):
        color = cmap(k / max(1, len(lines) - 1)) if len(lines) > 1 else "C0"
        ax = figs["sharpness_vs_step_size"][1]
        _band(ax, etas, _where(sub, "final_sharpness"), color, label)
        if "gf_final_sharpness" in sub:
            _gf_marker(ax, x0, _where(sub, "gf_final_sharpness", "gf_status"), color)
        ax.axhline(float(sub.S_lower), color=color, ls=":", lw=1)
        ax = figs["distance_vs_step_size"][1]
        _band(ax, etas, np.maximum(sub.final_distance_to_pi_star.values ** 2, 1e-32), color, label)
        if "gf_final_distance_to_pi_star" in sub:
            _gf_marker(ax, x0, np.maximum(sub.gf_final_distance_to_pi_star.values ** 2, 1e-32), color)
        st = sub.status.values
        ran = st != ""
        fail = (ran & (st != "converged")).sum(-1) / np.maximum(ran.sum(-1), 1)
        figs["divergence_vs_step_size"][1].plot(etas, fail, "o-", color=color, label=label)
        for name in ("distance_vs_step_size", "divergence_vs_step_size"):
            figs[name][1].axvline(float(sub.eta_crit), color=color, ls=":", lw=1)
    grid_eta = np.geomspace(x0 * 1.7, etas.max() * 1.3, 100)
    figs["sharpness_vs_step_size"][1].plot(grid_eta, 2 / grid_eta, "k--", lw=1, label="2/η")
    for name, ylabel in specs:
        fig, ax = figs[name]
        ax.axvline(x0 * 1.7, color="0.7", lw=0.5)
        ax.annotate("GF", (x0, 0.02), xycoords=("data", "axes fraction"), ha="center", fontsize=8)
        ax.set(xscale="log", xlabel="step size η  (GF: η → 0, left of the grey line)", ylabel=ylabel)
        if name != "divergence_vs_step_size":
            ax.set_yscale("log")
        else:
            ax.set_ylim(-0.05, 1.05)
        ax.set_title({"sharpness_vs_step_size": "Final sharpness (dotted: S_lower; dashed: 2/η)",
                      "distance_vs_step_size": "Distance to π* (dotted: 1/(aL))",
                      "divergence_vs_step_size": "GD failures (dotted: 1/(aL))"}[name])
        ax.legend(fontsize=7)
        out[name] = fig
    return out


def evolution(ds: xr.Dataset):
    """Distance to π* and sharpness (those recorded) against GD steps, per η: median
    and quartile band over seeds, with 2/η and S_lower."""
    names = [n for n in ("distance_to_pi_star", "sharpness", "excess_risk") if n in ds and "record" in ds[n].dims]
    fig, axes = plots.new_figure(len(names), width=5, height=4)
    for ax, name in zip(axes, names):
        for i, eta in enumerate(ds.step_size.values):
            v = ds[name].isel(step_size=i).transpose("record", "seed").values
            _band(ax, ds.step.values[i], v, _color(i), f"η = {eta:g}", marker="")
            if name == "sharpness":
                ax.axhline(2 / eta, color=_color(i), ls="--", lw=0.8)
        if name == "sharpness":
            ax.axhline(float(ds.S_lower), color="C3", ls=":", lw=1.5, label="S_lower = 2La")
            if "gf_final_sharpness" in ds:
                ax.axhline(float(np.nanmedian(ds.gf_final_sharpness.values)), color="k", ls="-.",
                           lw=1, label="GF, final")
        else:
            ax.set_yscale("log")
        ax.set(xlabel="GD step", ylabel=name.replace("_", " "))
        ax.legend(fontsize=7)
    fig.suptitle("Evolution along GD (median, quartile band; dashed: 2/η)")
    return fig


def generalization(ds: xr.Dataset):
    """Generalization gap (test risk − train risk) against final sharpness, converged runs."""
    fig, (ax,) = plots.new_figure(width=6, height=4.5)
    for i, eta in enumerate(ds.step_size.values):
        s = ds.isel(step_size=i)
        ok = (s.status.values == "converged").ravel()
        gap = (s.final_test_risk.values - s.final_risk.values).ravel()
        ax.scatter(s.final_sharpness.values.ravel()[ok], gap[ok], s=10, color=_color(i), alpha=0.6,
                   label=f"η = {eta:g}")
    if "gf_final_test_risk" in ds and "gf_final_risk" in ds:
        ok = (ds.gf_status.values == "converged").ravel()
        gap = (ds.gf_final_test_risk.values - ds.gf_final_risk.values).ravel()
        ax.scatter(ds.gf_final_sharpness.values.ravel()[ok], gap[ok], s=14, color="k", marker="^", label="GF")
    ax.set(xscale="log", xlabel="final sharpness S", ylabel="test risk − train risk",
           title="Generalization gap vs sharpness")
    ax.legend(fontsize=7)
    return fig


def figures(ds: xr.Dataset) -> dict:
    """Every figure that the sweep's dims and variables allow, by file stem."""
    dims = json.loads(ds.attrs["sweep_dims"])
    keys = dict(zip(dims, json.loads(ds.attrs["sweep_keys"])))
    init = [d for d in dims if keys[d] in _INIT_KEYS]
    others = [d for d in dims if d not in init]
    out = {}
    for x in init:
        rest = [d for d in dims if d != x]
        for suffix, _, sub in _facets(ds, rest):
            out[f"sharpness_vs_{x}{suffix}"] = sharpness_vs_init(sub, x)
            out[f"distance_vs_{x}{suffix}"] = distance_vs_init(sub, x)
            out[f"divergence_vs_{x}{suffix}"] = divergence_vs_init(sub, x)
    out.update(step_size_figures(ds, dims))
    evolving = [n for n in ("distance_to_pi_star", "sharpness", "excess_risk") if n in ds and "record" in ds[n].dims]
    if evolving and ds.sizes["record"] > 2:
        for suffix, _, sub in _facets(ds, init + others, limit=4):
            out[f"evolution{suffix}"] = evolution(sub)
    if "final_test_risk" in ds and "final_risk" in ds:
        out["generalization_vs_sharpness"] = generalization(ds)
    return out


def save_figures(ds: xr.Dataset, folder: str | os.PathLike) -> list[str]:
    """Write [`figures`][] as PNG files in `folder` (atomically); returns their paths."""
    return plots.write_figures(figures(ds), folder)
