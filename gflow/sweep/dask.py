"""Chunks on a Dask cluster: submitted to a `distributed.Client`, rerun when a worker dies,
handed back as they complete; and the clusters `gflow sweep` starts or joins.

Dask is optional (`pip install 'gflow[dask]'`): `distributed` is imported where it is used.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence

import jax

from ..compilation import compilation_cache
from .chunk import run_chunk
from .plan import ChunkSpec

WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
"""Environment of local Dask workers (besides the client's `XLA_FLAGS`, see
[`worker_env`][]): NumPy's BLAS on one thread each."""


def worker_env() -> dict[str, str]:
    """The environment of local Dask workers: `WORKER_ENV` and this process's `XLA_FLAGS`.
    Workers must compile exactly the programs this process compiles: XLA's single-threaded
    Eigen products (`--xla_cpu_multi_thread_eigen=false`) round some matrix products (those
    with a transposed operand) differently from the multi-threaded ones, which would break
    bitwise-identical sweeps, while the multi-threaded ones give the same bits on any number
    of cores. The same flags also share this process's compilation cache entries."""
    env = dict(WORKER_ENV)
    if "XLA_FLAGS" in os.environ:
        env["XLA_FLAGS"] = os.environ["XLA_FLAGS"]
    return env


class DaskMissingError(ImportError):
    """A Dask cluster was asked for, but `distributed` is not installed."""


def _run_on_dask(client, todo: Sequence[ChunkSpec], finished, retries: int, timeout: float | None):
    """Submit every chunk; hand each result to `finished` as it completes. Dask reruns a
    chunk whose worker died (and retries a failed one); on an error here, or after
    `timeout` seconds, the rest is cancelled."""
    from distributed import as_completed

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
    """Import gflow on every worker (new ones too) before it runs a chunk: float64 on
    (unpickling this plugin imports its module, hence gflow); and share the client's
    compilation cache, if any."""

    def __init__(self, cache_dir: str | None = None):
        self.cache_dir = cache_dir

    def setup(self, worker):
        if self.cache_dir:
            compilation_cache(self.cache_dir)


@contextlib.contextmanager
def local_cluster(n_workers: int):
    """A Dask `LocalCluster` on 127.0.0.1 with `n_workers` processes of one Dask thread each
    (environment: [`worker_env`][]), and its client."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, env=worker_env()) as cluster, Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        try:
            yield client
        except KeyboardInterrupt:
            # A worker inside a compiled computation would take the nanny's grace period
            # (4 s) to stop: end them now, nothing of theirs is written.
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            raise


@contextlib.contextmanager
def client(dask: str | None = None, workers: int | None = None):
    """The Dask client a sweep runs on, for as long as the `with` block: one connected to the
    scheduler at address `dask`, or that of a [`local_cluster`][] of `workers` processes
    (started here, stopped at the end); `None` when neither is given (run in-process).

    Raises `DaskMissingError` when a cluster is asked for and Dask is not installed, and
    `ValueError` when both `dask` and `workers` are given.
    """
    if dask is None and workers is None:
        yield None
        return
    if dask is not None and workers is not None:
        raise ValueError("give a scheduler address (dask) or a number of workers, not both")
    try:
        from distributed import Client
    except ImportError:
        raise DaskMissingError("Dask is not installed: pip install 'gflow[dask]'") from None
    if workers is not None:
        with local_cluster(workers) as c:
            yield c
    else:
        with Client(dask) as c:
            yield c
