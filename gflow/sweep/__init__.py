"""Sweeps: a scenario's `[sweep]` grid, run as vectorized chunks, resumable, in one
process or on a Dask cluster.

- `plan`: the grid expanded, validated and cut into chunks ([`plan`][], [`ChunkSpec`][]);
  how a sweep scenario reads is told there.
- `chunk`: one chunk, GD at every step size and the GF point ([`run_chunk`][], pure).
- `gf`: the GF point of a chunk, every initialization in one vmapped solve ([`gf_point`][]).
- `combine`: the chunks as one Dataset on the grid ([`combine`][]) and its table of runs.
- `driver`: [`run`][], in this process or on a Dask client, writing (or resuming) the
  sweep folder: `scenario.toml`, `sweep.json`, `chunks/<id>.nc`, `sweep.nc`, `runs.csv`,
  `figures/*.png`; Ctrl-C stops it at once, even inside a chunk's computation.
- `dask`: chunks on a Dask cluster, [`local_cluster`][] and [`client`][] (Dask is optional).
- `figures`: the sweep's figures ([`figures`][], [`save_figures`][]).
"""

from ..compilation import compilation_cache
from .chunk import run_chunk
from .combine import combine, runs_table
from .dask import WORKER_ENV, DaskMissingError, client, local_cluster
from .driver import SweepResult, run
from .gf import gf_point
from .figures import (
    distance_vs_init,
    divergence_vs_init,
    evolution,
    figures,
    generalization,
    save_figures,
    sharpness_vs_init,
    step_size_figures,
)
from .plan import CHUNK_RUNS, FORMAT, ChunkSpec, Plan, plan

__all__ = [
    "CHUNK_RUNS",
    "ChunkSpec",
    "DaskMissingError",
    "FORMAT",
    "Plan",
    "SweepResult",
    "WORKER_ENV",
    "client",
    "combine",
    "compilation_cache",
    "distance_vs_init",
    "divergence_vs_init",
    "evolution",
    "figures",
    "generalization",
    "gf_point",
    "local_cluster",
    "plan",
    "run",
    "run_chunk",
    "runs_table",
    "save_figures",
    "sharpness_vs_init",
    "step_size_figures",
]
