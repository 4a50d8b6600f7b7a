"""gflow.sweep on a local Dask cluster (loopback, 2 worker processes): the same bits as
in-process, no run lost or doubled when a worker dies, and resuming after an interruption."""

import os
import signal
import textwrap

import numpy as np
import pytest
import xarray as xr

from gflow import cli, sweep, trajectory
from tests.conftest import GD_SLOWDOWN

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow

TIMEOUT = 240  # seconds a sweep may take on the cluster before the test fails

GRID = """
    name = "grid"
    [data]
    kind = "gaussian"
    n = 20
    d = 3
    [model]
    kind = "mlp"
    depth = 3
    width = 3
    init = {{ kind = "small_scale", scale = 0.5 }}
    [flow]
    t_max = 1e5
    [descent]
    step_sizes = [0.05, 0.1, 0.3]
    steps = {steps}
    reps = 3
    observables = ["excess_risk"]
    [sweep]
    "model.init.scale" = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    """
CHUNK_RUNS = 9  # one point (3 step sizes × 3 seeds) per chunk: 6 chunks


def _grid(tmp_path_factory, steps):
    """(scenario file, its sweep.nc computed in this process)."""
    folder = tmp_path_factory.mktemp("dask")
    path = folder / "grid.toml"
    path.write_text(textwrap.dedent(GRID.format(steps=steps)))
    sweep.run(path, folder / "in_process", chunk_runs=CHUNK_RUNS, figures=False)
    return str(path), trajectory.load(folder / "in_process" / "sweep.nc")



@pytest.fixture(autouse=True)
def _no_compilation_cache(monkeypatch):
    """`gflow sweep` turns JAX's persistent cache on; not inside the test session."""
    monkeypatch.setenv("GFLOW_JAX_CACHE", "off")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return _grid(tmp_path_factory, 3000)


@pytest.fixture(scope="module")
def scenario_file(grid):
    return grid[0]


@pytest.fixture(scope="module")
def in_process(grid):
    return grid[1]


@pytest.fixture(scope="module")
def slow_grid(tmp_path_factory):
    """Chunks long enough (about a second each on 2 cores) that, when the first result
    reaches the driver, four are still to run: 60,000 steps (0.3 s a chunk with the fused
    GD kernel on XLA's default build) sometimes let every chunk finish before the driver saw
    the first one. 250,000 steps there, a third of that on the tests' build."""
    return _grid(tmp_path_factory, 250000 // GD_SLOWDOWN)


@pytest.fixture(scope="module")
def client():
    with sweep.local_cluster(2) as c:
        yield c


def test_workers_are_loopback_processes_with_this_process_xla_flags(client):
    info = client.scheduler_info()
    assert len(info["workers"]) == 2
    assert all(addr.startswith("tcp://127.0.0.1:") for addr in info["workers"])
    assert all(w["nthreads"] == 1 for w in info["workers"].values())
    flags = client.run(lambda: (os.environ.get("XLA_FLAGS"), os.environ.get("OMP_NUM_THREADS")))
    assert set(flags.values()) == {(os.environ.get("XLA_FLAGS"), "1")}


def test_cluster_result_is_bitwise_the_in_process_one(client, scenario_file, in_process, tmp_path):
    result = sweep.run(scenario_file, tmp_path / "s", client=client, chunk_runs=CHUNK_RUNS,
                       figures=False, timeout=TIMEOUT)
    assert len(result.computed) == 6
    xr.testing.assert_identical(trajectory.load(tmp_path / "s" / "sweep.nc"), in_process)


def test_cli_dask_address(client, scenario_file, in_process, tmp_path):
    out = tmp_path / "cli"
    address = client.scheduler.address
    # the CLI uses the default chunk size: compare the runs, not the chunk layout
    assert cli.main(["sweep", scenario_file, "--out", str(out), "--dask", address, "--quiet"]) == 0
    ds = trajectory.load(out / "sweep.nc")
    assert (ds.status.values == in_process.status.values).all()
    assert (ds.gf_status.values == in_process.gf_status.values).all()
    for name in ("final_sharpness", "gf_final_sharpness", "initial_sharpness"):
        np.testing.assert_allclose(ds[name].values, in_process[name].values, rtol=1e-9)


def test_losing_a_worker_loses_and_doubles_nothing(client, slow_grid, tmp_path):
    scenario_file, in_process = slow_grid
    killed = []

    def kill_a_busy_worker(spec, ds):
        if killed:
            return
        busy = [addr for addr, keys in client.processing().items() if keys]
        assert busy, "no chunk in flight to lose"
        pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
        os.kill(pid, signal.SIGKILL)  # abrupt loss, mid-chunk
        killed.append(busy[0])

    out = tmp_path / "s"
    result = sweep.run(scenario_file, out, client=client, chunk_runs=CHUNK_RUNS, figures=False,
                       on_chunk=kill_a_busy_worker, timeout=TIMEOUT)
    assert killed
    assert sorted(result.computed) == sorted(c.id for c in result.plan.chunks)
    assert len(os.listdir(out / "chunks")) == 6
    table = result.runs
    assert len(table) == 6 * 3 * 3
    assert not table.duplicated(["scale", "step_size", "seed"]).any()
    xr.testing.assert_identical(trajectory.load(out / "sweep.nc"), in_process)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it


def test_interrupted_cluster_sweep_resumes(client, scenario_file, in_process, tmp_path):
    out = tmp_path / "s"

    class Stop(Exception):
        pass

    def stop_after_two(spec, ds):
        if len(os.listdir(out / "chunks")) >= 2:
            raise Stop

    with pytest.raises(Stop):
        sweep.run(scenario_file, out, client=client, chunk_runs=CHUNK_RUNS, figures=False,
                  on_chunk=stop_after_two, timeout=TIMEOUT)
    done = {f[:-3] for f in os.listdir(out / "chunks") if f.endswith(".nc")}
    assert len(done) == 2
    again = sweep.run(scenario_file, out, client=client, chunk_runs=CHUNK_RUNS, figures=False, timeout=TIMEOUT)
    assert set(again.skipped) == done and len(again.computed) == 4 and not done & set(again.computed)
    xr.testing.assert_identical(trajectory.load(out / "sweep.nc"), in_process)
