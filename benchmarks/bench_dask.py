"""Throughput of `gflow sweep` on a local Dask cluster (2 single-threaded worker processes
on loopback) against the default in-process run, and Dask's overhead per chunk.

- Throughput: the paper's MLP (n = 50, d = 5, L = 10), 8 init scales × 20 seeds × 3 step
  sizes × 2000 steps with the GF point, in 8 equal chunks. Timed cold (compilation
  included: each worker compiles for itself) and warm (a second run, every process
  already compiled); the combined Datasets must be identical.
- Overhead per chunk: 40 chunks of three 10-step runs (no GF), warm, on a one-worker
  cluster minus in-process, divided by 40 (and the same on two workers).

    python benchmarks/bench_dask.py
"""

from __future__ import annotations

import os
import tempfile
import textwrap
import time

import xarray as xr

from gflow import sweep

GRID = """
    name = "bench_dask"
    [data]
    kind = "gaussian"
    n = 50
    d = 5
    [model]
    kind = "mlp"
    depth = 10
    width = 5
    init = {{ kind = "small_scale", scale = 0.3 }}
    [flow]
    t_max = 1e6
    [descent]
    step_sizes = [0.01, 0.02, 0.05]
    steps = {steps}
    reps = {reps}
    observables = []
    gf = {gf}
    [sweep]
    "model.init.scale" = {scales}
    """


def _scenario(folder, name, **kw):
    path = os.path.join(folder, f"{name}.toml")
    with open(path, "w") as f:
        f.write(textwrap.dedent(GRID.format(**kw)))
    return path


def _timed(path, chunk_runs, client=None):
    start = time.perf_counter()
    result = sweep.run(path, client=client, chunk_runs=chunk_runs, figures=False)
    return time.perf_counter() - start, result


def main():
    with tempfile.TemporaryDirectory() as tmp:
        scales = [round(0.25 + 0.03 * k, 2) for k in range(8)]
        big = _scenario(tmp, "big", steps=2000, reps=20, gf="true", scales=scales)
        tiny = _scenario(tmp, "tiny", steps=10, reps=1, gf="false", scales=[round(0.2 + 0.01 * k, 2) for k in range(40)])
        runs_per_chunk = 60  # one scale: 3 step sizes × 20 seeds
        cold_local, local = _timed(big, runs_per_chunk)
        warm_local, _ = _timed(big, runs_per_chunk)
        tiny_local, _ = _timed(tiny, 3)
        tiny_local, _ = _timed(tiny, 3)  # warm
        with sweep.local_cluster(2) as client:
            cold_dask, remote = _timed(big, runs_per_chunk, client)
            warm_dask, _ = _timed(big, runs_per_chunk, client)
            _timed(tiny, 3, client)
            tiny_dask, _ = _timed(tiny, 3, client)
        with sweep.local_cluster(1) as client:  # one worker: the overhead, not hidden by parallelism
            _timed(tiny, 3, client)
            tiny_dask1, _ = _timed(tiny, 3, client)
        xr.testing.assert_identical(local.dataset, remote.dataset)
    n = len(local.plan.chunks)
    print(f"grid: {local.plan.runs} GD runs (+ {local.plan.runs // 3} GF runs) in {n} chunks; results identical")
    print(f"in-process:        {cold_local:6.1f} s cold, {warm_local:6.1f} s warm")
    print(f"Dask, 2 workers:   {cold_dask:6.1f} s cold, {warm_dask:6.1f} s warm")
    print(f"throughput ratio (Dask / in-process): {cold_local / cold_dask:.2f}x cold, {warm_local / warm_dask:.2f}x warm")
    print(f"40 chunks of 3 ten-step runs, warm, wall time per chunk: in-process {tiny_local / 40 * 1e3:.1f} ms, "
          f"Dask 1 worker {tiny_dask1 / 40 * 1e3:.1f} ms, Dask 2 workers {tiny_dask / 40 * 1e3:.1f} ms")
    print(f"Dask overhead per chunk (1 worker − in-process): {(tiny_dask1 - tiny_local) / 40 * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
