"""Running a sweep: its chunks one after the other in this process, or on a Dask client,
and its folder.

A sweep folder holds `scenario.toml`, `sweep.json` (which scenario the folder is for, and
the SHA-256 of every finished chunk), `chunks/<id>.nc` (each finished chunk, written
atomically), `sweep.nc` (one Dataset, the swept parameters as coordinates), `runs.csv`
(one row per GD run) and `figures/*.png`.

In this process each chunk computes in a thread while the caller waits in short sleeps,
so Ctrl-C (KeyboardInterrupt) stops a sweep within a fraction of a second, even inside a
compiled computation: the chunks written so far are kept, the one in flight is dropped
(it is only written once complete), and the next run resumes. `gflow sweep` then leaves
with `os._exit` (see [`chunk_running`][]). On a local Dask cluster, Ctrl-C also ends the
workers at once ([`gflow.sweep.dask.local_cluster`][]).

While a sweep writes its folder it holds the folder's lock (`gflow.files.folder_lock`): a
second sweep on the same folder is refused. A rerun of the same scenario (the same
validated scenario and data files, whatever the file's layout) skips the chunks already
there; a chunk whose file is damaged is reported in one warning line, deleted and
computed again. A folder that holds another sweep, or no sweep, is refused unless
`overwrite`; the new sweep is then built beside it and swapped in once complete, so an
interrupted overwrite leaves the old folder as it was.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import threading
import tomllib
import warnings
from collections.abc import Callable
from typing import Any

import xarray as xr

from .. import files, trajectory
from .. import scenario as scen
from ..experiment import Progress
from ..files import OutputExistsError
from .chunk import run_chunk
from .combine import combine, runs_table
from .dask import _run_on_dask
from .figures import save_figures
from .plan import CHUNK_RUNS, ChunkSpec, Plan, plan

MANIFEST = "sweep.json"
"""The file of a sweep folder that says which scenario it holds and checksums its chunks."""


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
    - `out`: the sweep folder; chunks already there (intact) are not recomputed. `None`:
      in memory.
    - `overwrite`: start afresh, replacing the folder once the new sweep is complete.
    - `quiet`: no progress messages.
    - `client`: a `distributed.Client`; chunks are submitted to it (with `retries`) and
      written as they complete. `None`: chunks run one after the other in this process.
    - `chunk_runs`: target GD runs per chunk (changing it changes the chunk ids).
    - `on_chunk`: called as `on_chunk(spec, dataset)` after each chunk is computed (and
      written); an exception there stops the sweep, leaving the written chunks.
    - `figures`: write `figures/*.png`.
    - `timeout`: with a `client`, give up (cancelling the rest) after this many seconds.

    Raises `ScenarioError` for a bad scenario, `OutputExistsError` when `out` exists but
    is not a sweep folder of this scenario, and `gflow.files.FolderInUseError` when
    another process is writing `out`, before anything is computed or written.
    """
    progress = Progress(quiet)
    if not isinstance(scenario, scen.Scenario):
        scenario = scen.load(scenario)
    the_plan = plan(scenario, chunk_runs)
    compute = functools.partial(_compute, the_plan, progress=progress, client=client, retries=retries,
                                on_chunk=on_chunk, timeout=timeout)
    if out is None:
        store = _ChunkStore(None)
        return _result(scenario, the_plan, store, *compute(store))
    folder = os.fspath(out)
    with files.folder_lock(folder):
        files.clean_leftovers(folder)
        work, store = _prepare_folder(scenario, folder, overwrite)
        try:
            result = _result(scenario, the_plan, store, *compute(store))
            paths = _write_results(result, work, figures)
            if work != folder:
                files.replace_folder(work, folder)
        except BaseException:
            if work != folder:
                shutil.rmtree(work, ignore_errors=True)
            raise
    result.folder = folder
    result.figures = [os.path.join(folder, os.path.relpath(p, work)) for p in paths]
    progress(f"{the_plan.name}: wrote {folder}")
    return result


def _compute(the_plan: Plan, store: _ChunkStore, *, progress, client, retries, on_chunk, timeout):
    """Run the chunks not yet in `store`, putting each there as it finishes; the ids of the
    chunks computed and of those skipped."""
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
            files.pause_point("sweep-chunk")
            finished(spec, _interruptible(run_chunk, spec))
    else:
        _run_on_dask(client, todo, finished, retries, timeout)
    return computed, skipped


_RUNNING: set[threading.Event] = set()
"""One event per chunk computing in a thread of [`_interruptible`][], set when it ends."""


def chunk_running() -> bool:
    """Whether a chunk abandoned by an interrupt still computes in its thread (see
    [`_interruptible`][]). A process should then leave with `os._exit` rather than by
    interpreter shutdown, which kills the thread inside XLA and aborts the process."""
    return any(not done.is_set() for done in list(_RUNNING))


def _interruptible(fn, *args):
    """`fn(*args)` in a daemon thread, the calling thread waiting in short sleeps, so that
    Ctrl-C (KeyboardInterrupt, delivered to the main thread between Python bytecodes only)
    stops the sweep at once while a compiled computation runs, instead of at its end.

    On an interrupt the thread is abandoned: it only computes (the caller writes the
    files), and as a daemon it does not hold the process at exit. Its exception, if any,
    is raised here."""
    out: dict = {}
    done = threading.Event()

    def target():
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 (handed to the caller)
            out["error"] = e
        finally:
            done.set()
            _RUNNING.discard(done)

    _RUNNING.add(done)
    threading.Thread(target=target, name="gflow-chunk", daemon=True).start()
    while not done.wait(0.05):
        pass
    if "error" in out:
        raise out.pop("error")
    return out["value"]


def _result(scenario, the_plan, store, computed, skipped) -> SweepResult:
    ds = combine(the_plan, [store.get(c) for c in the_plan.chunks], scenario.name)
    return SweepResult(ds, runs_table(ds), the_plan, computed, skipped)


def _prepare_folder(scenario: scen.Scenario, folder: str, overwrite: bool) -> tuple[str, _ChunkStore]:
    """The folder the sweep writes (`folder` itself when it is new or holds this scenario's
    sweep, else, with `overwrite`, a new one beside it, swapped in at the end) and its
    chunk store. A new folder appears whole: `scenario.toml`, `sweep.json`, `chunks/`."""
    identity = _identity(scenario)
    if os.path.lexists(folder) and not overwrite:
        store = _ChunkStore(folder, identity, _resumable(scenario, folder, identity))
        _copy_scenario(scenario, folder)
        store.save()
        return folder, store
    work = files.temp_folder(folder)
    try:
        os.makedirs(os.path.join(work, "chunks"))
        _copy_scenario(scenario, work)
        _ChunkStore(work, identity).save()
        if os.path.lexists(folder):
            return work, _ChunkStore(work, identity)
        files.replace_folder(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return folder, _ChunkStore(folder, identity)


def _copy_scenario(scenario: scen.Scenario, folder: str) -> None:
    if scenario.source is not None:
        with files.atomic_path(os.path.join(folder, "scenario.toml")) as tmp:
            shutil.copyfile(scenario.source, tmp)


def _identity(scenario: scen.Scenario) -> dict:
    """Which sweep a folder holds: the scenario's name, file, and a fingerprint of the
    validated scenario and of the data and weight files it reads (not of the file's bytes:
    the same scenario with other whitespace or comments is the same sweep)."""
    raw = scenario.model_dump(mode="json")
    base = os.path.dirname(os.path.abspath(scenario.source)) if scenario.source else os.getcwd()
    digests = {}
    for p in sorted(set(_paths(raw))):
        path = os.path.join(base, p)
        digests[p] = files.sha256(path) if os.path.isfile(path) else "missing"
    text = json.dumps({"scenario": raw, "files": digests}, ensure_ascii=False)
    return dict(name=scenario.name, source=os.path.abspath(scenario.source) if scenario.source else None,
                fingerprint=hashlib.sha256(text.encode()).hexdigest())


def _paths(raw: dict):
    """The file paths a scenario dump names (`path` keys, swept `*.path` values)."""
    for key, value in raw.items():
        if isinstance(value, dict):
            yield from _paths(value)
        elif key == "path" or key.endswith(".path"):
            yield from (v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))


def _resumable(scenario: scen.Scenario, folder: str, identity: dict) -> dict[str, str]:
    """Check that `folder` is a sweep folder of this scenario; the chunk checksums it records.
    Raises `OutputExistsError` otherwise."""
    hint = "use --overwrite to replace it, or another --out"
    if not os.path.isdir(os.path.join(folder, "chunks")):
        raise OutputExistsError(f"{folder}: exists and is not a sweep folder ({hint})")
    manifest, problem = _read_manifest(folder)
    if manifest is None:  # written before sweep.json existed, or sweep.json is damaged
        if not _same_as_copy(scenario, folder, identity):
            raise OutputExistsError(f"{folder}: {problem}, and its scenario.toml is missing, damaged or another "
                                    f"scenario's: cannot tell which sweep it holds ({hint})")
        if problem != "no sweep.json":
            warnings.warn(f"{folder}: {problem}; its scenario.toml is this scenario, "
                          "so the sweep resumes (chunks are checked by reading them)", stacklevel=3)
        return {}
    if manifest["fingerprint"] != identity["fingerprint"]:
        raise OutputExistsError(f"{folder}: holds the sweep of another scenario ({manifest.get('name')!r} from "
                                f"{manifest.get('source')}: other keys, values or data) ({hint})")
    return dict(manifest["chunks"])


def _read_manifest(folder: str) -> tuple[dict | None, str]:
    """`sweep.json` of `folder`, or None and what is wrong with it."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None, "no sweep.json"
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        if isinstance(manifest["fingerprint"], str) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in manifest["chunks"].items()):
            return manifest, ""
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None, "sweep.json is damaged"


def _same_as_copy(scenario: scen.Scenario, folder: str, identity: dict) -> bool:
    """Whether the folder's scenario.toml is the same scenario (read as if it lay where
    `scenario`'s file lies)."""
    try:
        with open(os.path.join(folder, "scenario.toml"), "rb") as f:
            copy = scen.from_dict(tomllib.load(f), scenario.source)
    except (OSError, ValueError, scen.ScenarioError):
        return False
    return _identity(copy)["fingerprint"] == identity["fingerprint"]


class _ChunkStore:
    """The finished chunks of a sweep: files `chunks/<id>.nc` of its folder with their
    SHA-256 in `sweep.json`, or, without a folder, in memory."""

    def __init__(self, folder: str | None, identity: dict | None = None, sums: dict | None = None):
        self.folder = folder
        self.chunk_dir = None if folder is None else os.path.join(folder, "chunks")
        self.identity = identity or {}
        self.sums: dict[str, str] = dict(sums or {})
        self.fresh: dict[str, xr.Dataset] = {}

    def path(self, spec: ChunkSpec) -> str:
        return os.path.join(self.chunk_dir, f"{spec.id}.nc")

    def has(self, spec: ChunkSpec) -> bool:
        """Whether the chunk's file is in the folder and intact (never, in memory). A damaged
        one is reported in one warning line and deleted."""
        if self.chunk_dir is None or not os.path.isfile(self.path(spec)):
            return False
        problem = self._problem(spec)
        if problem is None:
            return True
        warnings.warn(f"{self.path(spec)}: {problem}; deleted, the chunk is computed again", stacklevel=2)
        os.remove(self.path(spec))
        if self.sums.pop(spec.id, None) is not None:
            self.save()
        return False

    def _problem(self, spec: ChunkSpec) -> str | None:
        """What is wrong with the chunk's file (None: nothing). Its checksum is compared with
        the one recorded when it was written; without one (a kill came between the two, or
        an older folder), it is read, and its checksum recorded if it is whole."""
        path = self.path(spec)
        if spec.id in self.sums:
            return None if files.sha256(path) == self.sums[spec.id] else "damaged (its SHA-256 is not the one recorded)"
        try:
            ds = trajectory.load(path, expect="chunk")
        except files.DamagedFileError as e:
            return e.reason
        if ds.attrs.get("chunk") != spec.id:
            return f"not this chunk (it holds chunk {ds.attrs.get('chunk')})"
        self.sums[spec.id] = files.sha256(path)
        self.save()
        return None

    def put(self, spec: ChunkSpec, ds: xr.Dataset) -> None:
        if self.chunk_dir is None:
            self.fresh[spec.id] = ds
            return
        trajectory.save(ds, self.path(spec), stage="chunk-write")
        self.sums[spec.id] = files.sha256(self.path(spec))
        self.save()

    def get(self, spec: ChunkSpec) -> xr.Dataset:
        return self.fresh[spec.id] if spec.id in self.fresh else trajectory.load(self.path(spec), expect="chunk")

    def save(self) -> None:
        """Write `sweep.json`: the folder's identity and the checksums of its chunks."""
        manifest = dict(format=1, **self.identity, chunks=self.sums)
        files.write_text(os.path.join(self.folder, MANIFEST), json.dumps(manifest, indent=1) + "\n")


def _write_results(result: SweepResult, folder: str, figures: bool) -> list[str]:
    """Write `sweep.nc`, `runs.csv` and (with `figures`) `figures/*.png`; the figures' paths."""
    trajectory.save(result.dataset, os.path.join(folder, "sweep.nc"))
    with files.atomic_path(os.path.join(folder, "runs.csv")) as tmp:
        result.runs.to_csv(tmp, index=False)
    files.pause_point("sweep-figures")
    return save_figures(result.dataset, os.path.join(folder, "figures")) if figures else []
