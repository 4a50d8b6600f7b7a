"""The plan of a sweep: a scenario's `[sweep]` grid, expanded, validated and cut into
chunks; nothing is computed here.

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

Points that share data and shapes (they differ only in the initialization scale) are
batched into one `gflow.descent.run` call per set of seeds, cut into chunks of about
`chunk_runs` GD runs of equal size (equal shapes: one compilation). A [`ChunkSpec`][] is
picklable, and its `id` is a hash of what the chunk computes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence

import numpy as np

from .. import scenario as scen
from ..scenario import ScenarioError

CHUNK_RUNS = 400
"""Target number of GD runs (step sizes × seeds × points) per chunk."""

FORMAT = 1
"""Version of the chunk layout; part of every chunk id."""

_RESERVED = {"point", "step_size", "seed", "record", "step", "time", "layer", "interface", "feature"}


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
        if key == "model.activation":
            raise ScenarioError(f"{where}: sweep.{key}: sweep one activation at a time (networks with and "
                                "without an activation record different quantities)")
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
