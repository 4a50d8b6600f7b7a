"""Running a sweep: its chunks one after the other in this process, or on a Dask client,
and its folder.

A sweep folder holds `scenario.toml`, `chunks/<id>.nc` (each finished chunk, written
atomically), `sweep.nc` (one Dataset, the swept parameters as coordinates), `runs.csv`
(one row per GD run) and `figures/*.png`. A rerun skips the chunks whose file exists, and
the final combine reads every chunk file in plan order.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from typing import Any

import xarray as xr

from .. import files, trajectory
from .. import scenario as scen
from ..experiment import OutputExistsError, Progress
from .chunk import run_chunk
from .combine import combine, runs_table
from .dask import _run_on_dask
from .figures import save_figures
from .plan import CHUNK_RUNS, ChunkSpec, Plan, plan


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
    progress = Progress(quiet)
    if not isinstance(scenario, scen.Scenario):
        scenario = scen.load(scenario)
    the_plan = plan(scenario, chunk_runs)
    folder = None if out is None else os.fspath(out)
    if folder is not None:
        _prepare_folder(scenario, folder, overwrite)
    store = _ChunkStore(folder)
    todo = [c for c in the_plan.chunks if not store.has(c)]
    skipped = [c.id for c in the_plan.chunks if c not in todo]
    progress(f"{the_plan.name}: {the_plan.runs} GD runs in {len(the_plan.chunks)} chunks"
             + (f" ({len(skipped)} already done)" if skipped else "")
             + (" on Dask" if client is not None else ""))
    computed: list[str] = []

    def finished(spec, ds):
        store.put(spec, ds)
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

    ds = combine(the_plan, [store.get(c) for c in the_plan.chunks], scenario.name)
    result = SweepResult(ds, runs_table(ds), the_plan, computed, skipped, folder)
    if folder is not None:
        result.figures = _write_results(result, folder, figures)
        progress(f"{the_plan.name}: wrote {folder}")
    return result


def _prepare_folder(scenario: scen.Scenario, folder: str, overwrite: bool) -> None:
    """Make (or, with `overwrite`, remake) the sweep folder and its `chunks/`, with a copy
    of the scenario file; refuse a folder that is not a sweep's."""
    chunk_dir = os.path.join(folder, "chunks")
    if os.path.exists(folder) and not overwrite and not os.path.isdir(chunk_dir):
        raise OutputExistsError(f"{folder}: exists and is not a sweep folder (use --overwrite to replace it)")
    if overwrite and os.path.exists(folder):
        files.remove_folder(folder)
    os.makedirs(chunk_dir, exist_ok=True)
    if scenario.source is not None:
        with files.atomic_path(os.path.join(folder, "scenario.toml")) as tmp:
            shutil.copyfile(scenario.source, tmp)


class _ChunkStore:
    """The finished chunks of a sweep: files `chunks/<id>.nc` of its folder, or, without a
    folder, in memory."""

    def __init__(self, folder: str | None):
        self.chunk_dir = None if folder is None else os.path.join(folder, "chunks")
        self.fresh: dict[str, xr.Dataset] = {}

    def path(self, spec: ChunkSpec) -> str:
        return os.path.join(self.chunk_dir, f"{spec.id}.nc")

    def has(self, spec: ChunkSpec) -> bool:
        """Whether the chunk's file is already in the folder (never, in memory)."""
        return self.chunk_dir is not None and os.path.isfile(self.path(spec))

    def put(self, spec: ChunkSpec, ds: xr.Dataset) -> None:
        if self.chunk_dir is not None:
            trajectory.save(ds, self.path(spec))
        else:
            self.fresh[spec.id] = ds

    def get(self, spec: ChunkSpec) -> xr.Dataset:
        return self.fresh[spec.id] if spec.id in self.fresh else trajectory.load(self.path(spec))


def _write_results(result: SweepResult, folder: str, figures: bool) -> list[str]:
    """Write `sweep.nc`, `runs.csv` and (with `figures`) `figures/*.png`; the figures' paths."""
    trajectory.save(result.dataset, os.path.join(folder, "sweep.nc"))
    with files.atomic_path(os.path.join(folder, "runs.csv")) as tmp:
        result.runs.to_csv(tmp, index=False)
    return save_figures(result.dataset, os.path.join(folder, "figures")) if figures else []
