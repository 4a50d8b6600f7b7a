"""Scenario files: the TOML schema, its validation, and what a scenario builds.

A scenario says which data, which network and initialization, how to integrate and what
to record (and, optionally, GD step sizes and a sweep grid). Unknown keys are errors: a
typo must not be silently ignored. Every error names the file and the field.
"""

from __future__ import annotations

import copy
import itertools
import os
import tomllib
import warnings
from typing import Annotated, Any, Literal

import jax
import pydantic
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from . import models, observables as obs
from . import problem as problems
from .flow import CLOCKS, DYNAMICS, SOLVERS, FlowOptions
from .models import DeepLinear, ShapeError
from .problem import DataError, Problem


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]


# --- data ------------------------------------------------------------------------------


class GaussianData(_Strict):
    """The paper's data: X ~ N(0, I), y = X w_true + noise·N(0, 1)."""

    kind: Literal["gaussian"]
    n: PositiveInt
    d: PositiveInt
    noise: Annotated[FiniteFloat, Field(ge=0)] = 1.0
    seed: int = 0
    n_test: Annotated[int, Field(ge=0)] = 0
    unit_pi_star: bool = True


class AnisotropicData(GaussianData):
    """Σ̂ with condition number Λ/λ = `condition` exactly."""

    kind: Literal["anisotropic"]
    condition: Annotated[FiniteFloat, Field(ge=1)]


class FileData(_Strict):
    """X, y (and optionally X_test, y_test) from an .npz or .csv file."""

    kind: Literal["file"]
    path: str
    unit_pi_star: bool = False


class DatasetData(_Strict):
    """A real regression data set that ships inside scikit-learn (`gflow.problem.DATASETS`):
    features standardized, targets centred; `n_test` rows drawn by `seed` held out."""

    kind: Literal["dataset"]
    name: Literal[tuple(problems.DATASETS)]  # type: ignore[valid-type]
    n_test: Annotated[int, Field(ge=0)] = 0
    seed: int = 0
    unit_pi_star: bool = True


Data = Annotated[GaussianData | AnisotropicData | FileData | DatasetData, Field(discriminator="kind")]


# --- model -----------------------------------------------------------------------------


class SmallScaleInit(_Strict):
    """W_k(0) with i.i.d. N(0, scale²) entries."""

    kind: Literal["small_scale"]
    scale: Annotated[FiniteFloat, Field(gt=0)]


class ResidualInit(_Strict):
    """W_k(0) = I + (s/√(L d)) N_k."""

    kind: Literal["residual"]
    s: Annotated[FiniteFloat, Field(ge=0)]


class FileInit(_Strict):
    """Explicit weights W1..WL (and p) from an .npz file."""

    kind: Literal["file"]
    path: str


Init = Annotated[SmallScaleInit | ResidualInit | FileInit, Field(discriminator="kind")]


class Model(_Strict):
    """The network: an MLP (linear, or with an `activation` after every layer but the last)
    or a residual network (linear)."""

    kind: Literal["mlp", "residual"]
    depth: PositiveInt | None = None
    width: PositiveInt | list[PositiveInt] | None = None
    init: Init
    p: list[FiniteFloat] | None = None
    activation: Literal[tuple(models.ACTIVATIONS)] = "linear"  # type: ignore[valid-type]

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        if self.kind == "residual" and self.activation != "linear":
            raise ValueError("a residual network is linear; activation is for an mlp")
        if self.init.kind == "file":
            return self
        if self.depth is None:
            raise ValueError("depth is required (unless init.kind = 'file')")
        if self.kind == "mlp" and self.init.kind != "small_scale":
            raise ValueError("an mlp takes init.kind = 'small_scale' or 'file'")
        if self.kind == "residual" and self.init.kind != "residual":
            raise ValueError("a residual network takes init.kind = 'residual' or 'file'")
        if self.kind == "residual" and self.width is not None:
            raise ValueError("a residual network has width d; leave width out")
        if self.kind == "mlp" and self.p is not None:
            raise ValueError("an mlp has p = 1; leave p out")
        return self


# --- flow, record, descent, sweep ------------------------------------------------------


_FLOW = FlowOptions()  # the one source of the [flow] defaults


class Flow(_Strict):
    """The `[flow]` table: the fields of `gflow.flow.FlowOptions`, with its defaults."""

    solver: Literal[tuple(SOLVERS)] = _FLOW.solver  # type: ignore[valid-type]
    rtol: PositiveFinite = _FLOW.rtol
    atol: PositiveFinite = _FLOW.atol
    t_max: PositiveFinite = _FLOW.t_max
    saves: Annotated[int, Field(ge=2)] = _FLOW.saves
    t_first: PositiveFinite | None = _FLOW.t_first
    spacing: Literal["log", "linear"] = _FLOW.spacing
    stop_at_excess_risk: Annotated[FiniteFloat, Field(ge=0)] = _FLOW.stop_at_excess_risk
    max_steps: PositiveInt = _FLOW.max_steps
    clock: Literal[CLOCKS] = _FLOW.clock  # type: ignore[valid-type]
    switch_at: Annotated[FiniteFloat, Field(gt=0, lt=1)] = _FLOW.switch_at
    dynamics: Literal[DYNAMICS] = _FLOW.dynamics  # type: ignore[valid-type]
    step_size: PositiveFinite | None = _FLOW.step_size
    edge_eigenpairs: Annotated[int, Field(ge=1, le=5)] = _FLOW.edge_eigenpairs
    stop_at_grad_norm_sq: Annotated[FiniteFloat, Field(ge=0)] = _FLOW.stop_at_grad_norm_sq

    @pydantic.model_validator(mode="after")
    def _coherent(self):
        self.options()  # FlowOptions checks what spans several fields (t_first < t_max)
        return self

    def options(self) -> FlowOptions:
        return FlowOptions(**self.model_dump())


class Record(_Strict):
    observables: list[str] = list(obs.DEFAULT)

    @pydantic.field_validator("observables")
    @classmethod
    def _known(cls, names):
        unknown = [n for n in names if n not in obs.REGISTRY]
        if unknown:
            raise ValueError(f"unknown observable(s) {unknown}; known: {sorted(obs.REGISTRY)}")
        return names


class Descent(_Strict):
    """GD from the same initialization, at these step sizes (theory.md §3).

    `reps` and `gf` are read by `gflow sweep`: `reps` runs seeds seed, seed+1, …
    (one count, or one per step size as in the paper's 80 repetitions at η = 0.2);
    `gf` adds the gradient-flow point η → 0 from every initialization.
    `central` puts the central flow at every η beside GD, `modified` the modified-equation
    flow (`gflow run` and `gflow sweep`): continuous-time models of GD at a finite step size
    (theory.md §11), integrated over GD's horizon steps·η.
    """

    step_sizes: Annotated[list[PositiveFinite], Field(min_length=1)]
    steps: PositiveInt | list[PositiveInt]
    seeds: list[int] | None = None
    reps: PositiveInt | list[PositiveInt] | None = None
    gf: bool = True
    central: bool = False
    modified: bool = False
    record_every: PositiveInt | None = None
    observables: list[str] = ["risk", "excess_risk", "distance_to_pi_star"]

    @pydantic.model_validator(mode="after")
    def _lengths(self):
        if isinstance(self.steps, list) and len(self.steps) != len(self.step_sizes):
            raise ValueError("steps must be one number or one per step size")
        if isinstance(self.reps, list) and len(self.reps) != len(self.step_sizes):
            raise ValueError("reps must be one number or one per step size")
        if self.reps is not None and self.seeds is not None:
            raise ValueError("give seeds (explicit) or reps (a count), not both")
        unknown = [n for n in self.observables if n not in obs.REGISTRY]
        if unknown:
            raise ValueError(f"unknown observable(s) {unknown}")
        return self


class Scenario(_Strict):
    """A whole scenario file (see the README's table of keys)."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")]
    seed: int = 0
    data: Data
    model: Model
    flow: Flow = Flow()
    record: Record = Record()
    descent: Descent | None = None
    sweep: dict[str, list[Any]] | None = None
    source: str | None = Field(default=None, exclude=True)
    base_dir: str | None = Field(default=None, exclude=True)
    """The folder that relative data and weight paths are read from: the scenario file's
    own folder unless given (a run folder's copy is read from the original's folder)."""

    @pydantic.model_validator(mode="before")
    @classmethod
    def _defaults_for_the_network(cls, raw):
        """A network with an activation records by default what it has: the observables
        defined for linear networks only leave the default lists of [record] and [descent]."""
        model = raw.get("model") if isinstance(raw, dict) else None
        activation = model.get("activation", "linear") if isinstance(model, dict) else "linear"
        if activation == "linear" or activation not in models.ACTIVATIONS:
            return raw
        raw = dict(raw)
        if isinstance(raw.get("record", {}), dict):
            raw["record"] = {"observables": obs.applicable(obs.DEFAULT, activation), **raw.get("record", {})}
        if isinstance(raw.get("descent"), dict):
            default = Descent.model_fields["observables"].default
            raw["descent"] = {"observables": obs.applicable(default, activation), **raw["descent"]}
        return raw

    @pydantic.model_validator(mode="after")
    def _network_has_the_observables(self):
        """An observable asked of a network that lacks it (a linear-only one of a GELU
        network) is an error naming the key, the observable and why."""
        lists = {"record.observables": self.record.observables,
                 "descent.observables": self.descent.observables if self.descent else []}
        for key, names in lists.items():
            try:
                obs.refuse(names, self.model.activation)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
        return self

    def build_problem(self) -> Problem:
        """The regression problem (validated data)."""
        data = self.data
        if data.kind == "file":
            return problems.load(self._resolve(data.path), unit_pi_star=data.unit_pi_star)
        if data.kind == "dataset":
            return problems.dataset(data.name, n_test=data.n_test, seed=data.seed, unit_pi_star=data.unit_pi_star)
        common = dict(noise=data.noise, seed=data.seed, n_test=data.n_test, unit_pi_star=data.unit_pi_star)
        if data.kind == "anisotropic":
            return problems.anisotropic(data.n, data.d, condition=data.condition, **common)
        return problems.gaussian(data.n, data.d, **common)

    def build_model(self, d: int, seed: int | None = None) -> DeepLinear:
        """The network at t = 0 for inputs of size d (init drawn from `seed`)."""
        m, key = self.model, jax.random.key(self.seed if seed is None else seed)
        if m.init.kind == "file":
            model = models.load_layers(self._resolve(m.init.path), m.kind, m.activation)
            if m.depth is not None and model.depth != m.depth:
                raise ShapeError(f"weights file has depth {model.depth} but model.depth = {m.depth}")
        elif m.kind == "mlp":
            widths = models.mlp_widths(d, m.depth, m.width if m.width is not None else d)
            model = models.mlp(key, widths, m.init.scale, m.activation)
        else:
            # p is drawn from the scenario's own seed: other seeds redraw V only
            model = models.residual(key, d, m.depth, m.init.s, p=m.p, p_key=jax.random.key(self.seed))
        models.check_input_width(model, d)
        return model

    def folder(self) -> str | None:
        """The absolute folder relative paths are read from: `base_dir`, else the scenario
        file's folder (None for a scenario built from a dict: the working directory)."""
        if self.base_dir is None and self.source is None:
            return None
        return os.path.abspath(self.base_dir or os.path.dirname(os.path.abspath(self.source)))

    def _resolve(self, path: str) -> str:
        base = self.folder()
        return path if os.path.isabs(path) or base is None else os.path.join(base, path)

    def validate_inputs(self) -> tuple[Problem, DeepLinear]:
        """Build data and model, turning every data/shape problem into a ScenarioError."""
        where = self.source or self.name
        try:
            prob = self.build_problem()
        except DataError as e:
            raise ScenarioError(f"{where}: data: {e}") from None
        try:
            model = self.build_model(prob.d)
        except ShapeError as e:
            raise ScenarioError(f"{where}: model: {e}") from None
        if not prob.overdetermined:
            warnings.warn(
                f"{where}: Σ̂ is singular (n = {prob.n}, d = {prob.d}): the problem is "
                "underdetermined, minimizers do not all implement π*, and the bounds that use λ are void.",
                stacklevel=2,
            )
        return prob, model


def _format(error: pydantic.ValidationError, where: str) -> str:
    parts = []
    for e in error.errors():
        skip = ("function-", "constrained-", "list[", "int", "float", "str")
        loc = ".".join(str(x) for x in e["loc"] if not str(x).startswith(skip))
        loc = loc.replace(".gaussian", "").replace(".anisotropic", "").replace(".file", "").replace(".dataset", "")
        loc = loc.replace(".small_scale", "").replace(".residual", "")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (a typo?)"
        elif e["type"] == "missing":
            msg = "missing required key"
        parts.append(f"{loc}: {msg}" if loc else msg)  # a whole-scenario check names its keys itself
    return f"{where}: " + "; ".join(dict.fromkeys(parts))


def from_dict(raw: dict, source: str | None = None, base_dir: str | None = None) -> Scenario:
    """Validate a scenario given as a dict (as read from TOML); relative paths in it are
    read from `base_dir`, else from the folder of `source`."""
    where = source or "scenario"
    try:
        scenario = Scenario.model_validate({**raw, "source": source, "base_dir": base_dir})
    except pydantic.ValidationError as e:
        raise ScenarioError(_format(e, where)) from None
    return scenario


def load(path: str | os.PathLike, base_dir: str | None = None) -> Scenario:
    """Read and validate a TOML scenario file (relative paths in it are read from
    `base_dir`, default the file's own folder)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ScenarioError(f"{path}: is a folder, not a scenario file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{path}: not a valid TOML file ({e})") from None
    return from_dict(raw, source=path, base_dir=base_dir)


def expand(scenario: Scenario) -> list[tuple[dict[str, Any], Scenario]]:
    """The runs of a sweep: every combination of the `[sweep]` values, as (overrides, scenario).

    Keys are dotted paths into the scenario ("model.init.scale", "seed"); each run is
    validated like a file, so a bad value names its key.
    """
    if not scenario.sweep:
        return [({}, scenario)]
    raw = scenario.model_dump(exclude={"sweep"}, exclude_none=True)
    keys = list(scenario.sweep)
    for key in keys:
        _check_path(raw, key, scenario.source or scenario.name)
    runs = []
    for values in itertools.product(*(scenario.sweep[k] for k in keys)):
        run = copy.deepcopy(raw)
        for key, value in zip(keys, values):
            *head, last = key.split(".")
            node = run
            for part in head:
                node = node[part]
            node[last] = value
        overrides = dict(zip(keys, values))
        runs.append((overrides, from_dict(run, scenario.source, scenario.base_dir)))
    return runs


def _check_path(raw: dict, key: str, where: str):
    node, parts = raw, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            raise ScenarioError(f"{where}: sweep.{key}: {'.'.join(parts[:i])} is not a table")
        if part not in node and not (i == len(parts) - 1 and part in _optional_keys(parts[:-1])):
            raise ScenarioError(f"{where}: sweep.{key}: no such key in the scenario")
        node = node.get(part, {})


def _optional_keys(path: list[str]) -> set[str]:
    """Keys allowed at a path even when left at their default (so a sweep may set them)."""
    table = {
        (): set(Scenario.model_fields),
        ("data",): set(AnisotropicData.model_fields) | set(FileData.model_fields) | set(DatasetData.model_fields),
        ("model",): set(Model.model_fields),
        ("model", "init"): {"scale", "s", "path"},
        ("flow",): set(Flow.model_fields),
        ("record",): set(Record.model_fields),
        ("descent",): set(Descent.model_fields),
    }
    return table.get(tuple(path), set())
