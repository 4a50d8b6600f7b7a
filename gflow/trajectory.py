"""A trajectory as an `xarray.Dataset`, and its netCDF files (written atomically).

Layout:
- coordinates `time` (GF time; GD step k sits at t = kη), `layer` (1..L), `interface`
  (k for the pair (W_k, W_{k+1})), `feature` (1..d), `sample` (1..n);
- one variable per observable, on `time` and the observable's own dims;
- `weights_initial` and `weights_final` on (`layer`, `row`, `col`), each layer padded with
  NaN to the largest shape, and `p` on `output`;
- `attrs`: the problem's constants (lam, Lam, a, pi_star_norm, R_min, n, d), the network
  (kind, activation, depth, widths), solver settings, status, step counts and provenance. Attribute
  values are numbers or strings only (netCDF's rule); lists are stored as JSON.

The GF Dataset ([`build`][]) and the GD one (`gflow.descent.run`, on `step_size`, `seed`
and `record` instead of `time`) are made by the same code: [`network_fields`][],
[`observable_variables`][] and [`dataset`][].
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import NamedTuple

import diffrax
import equinox
import jax
import numpy as np
import xarray as xr

from . import __version__
from .files import DamagedFileError, atomic_path
from .models import DeepLinear, MLP, Residual, from_layers

ENGINE = "h5netcdf"

BALANCE_RESIDUAL = "balance_residual"
"""GD Datasets that record `balance_drift` also hold this: ‖D_k(t) − D_k(0) − η²Σ_j(G_{k+1}ᵀG_{k+1}
− G_kG_kᵀ)‖_F per interface, zero in exact arithmetic (theory.md §8)."""

MAX_WEIGHT_SQ = "max_weight_sq"
"""… and this: the largest Σ_k‖W_k‖_F² along the run so far (the scale of its round-off)."""


def weights_array(model: DeepLinear) -> np.ndarray:
    """W_1..W_L as one (..., layer, row, col) array, each layer padded with NaN.

    A batch of networks (leaves with leading axes, as `gflow.descent.batch` makes) gives
    those leading axes first.
    """
    blocks = [np.asarray(b) for b in model.weight_blocks()]
    rows = max(b.shape[-2] for b in blocks)
    cols = max(b.shape[-1] for b in blocks)
    depth = sum(b.shape[-3] for b in blocks)
    out = np.full((*blocks[0].shape[:-3], depth, rows, cols), np.nan)
    k = 0
    for b in blocks:
        out[..., k : k + b.shape[-3], : b.shape[-2], : b.shape[-1]] = b
        k += b.shape[-3]
    return out


def network(weights: np.ndarray, ds: xr.Dataset) -> DeepLinear:
    """The network of `ds`'s kind and widths with the padded (layer, row, col) `weights`."""
    widths = json.loads(ds.attrs["widths"])
    layers = [weights[k, : widths[k + 1], : widths[k]] for k in range(len(widths) - 1)]
    return from_layers(layers, ds["p"].values, ds.attrs["kind"], ds.attrs.get("activation", "linear"))


def model_kind(model: DeepLinear) -> str:
    return "residual" if isinstance(model, Residual) else "mlp" if isinstance(model, MLP) else type(model).__name__


def model_from(ds: xr.Dataset, which: str = "final") -> DeepLinear:
    """Rebuild the network stored in `ds` (`which` is "initial" or "final")."""
    return network(ds[f"weights_{which}"].values, ds)


def _attr(value):
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    if value is None:
        return "none"
    return value


class NetworkFields(NamedTuple):
    """What every trajectory Dataset, GF or GD, says about its network and problem:
    `coords` (layer, interface, feature), `data` (weights_initial, weights_final, p,
    pi_star) and `attrs` (the problem's constants, kind, depth, widths)."""

    coords: dict
    data: dict
    attrs: dict


def network_fields(
    initial: DeepLinear,
    final: DeepLinear,
    problem,
    *,
    model: DeepLinear | None = None,
    initial_dims: Sequence[str] = (),
    final_dims: Sequence[str] = (),
) -> NetworkFields:
    """The [`NetworkFields`][] shared by the GF Dataset ([`build`][]) and the GD one.

    **Arguments:**

    - `initial`, `final`: the networks whose weights are stored; for GD, batches whose
      leading axes `initial_dims` and `final_dims` name (e.g. ("seed",), ("step_size", "seed")).
    - `problem`: the regression problem (constants and π*).
    - `model`: one network, for kind, widths and p (default `initial`; give it for batches).
    """
    model = initial if model is None else model
    L = model.depth
    coords = dict(
        layer=("layer", np.arange(1, L + 1)),
        interface=("interface", np.arange(1, L)),
        feature=("feature", np.arange(1, problem.d + 1)),
        sample=("sample", np.arange(1, problem.n + 1)),
    )
    data = dict(
        weights_initial=((*initial_dims, "layer", "row", "col"), weights_array(initial)),
        weights_final=((*final_dims, "layer", "row", "col"), weights_array(final)),
        p=(("output",), np.asarray(model.p, np.float64)),
        pi_star=(("feature",), np.asarray(problem.pi_star)),
    )
    attrs = dict(problem.constants())
    attrs.update(kind=model_kind(model), activation=model.activation, depth=L, widths=list(model.widths))
    return NetworkFields(coords, data, attrs)


def observable_variables(observables, values: Mapping, dims: Sequence[str]) -> dict:
    """One Dataset variable per observable: `values[name]` on `dims` and the observable's
    own dims, with its description."""
    return {
        o.name: ((*dims, *o.dims), np.asarray(values[o.name], np.float64), {"description": o.description})
        for o in observables
    }


def dataset(data: Mapping, coords: Mapping, attrs: Mapping) -> xr.Dataset:
    """The Dataset of `data` on `coords`, with `attrs` and [`provenance`][] made netCDF-safe."""
    ds = xr.Dataset(dict(data), coords=dict(coords))
    ds.attrs = {k: _attr(v) for k, v in {**attrs, **provenance()}.items()}
    return ds


def build(times, values, observables, initial, final, problem, *, options=None, info=None) -> xr.Dataset:
    """Assemble the GF Dataset from save times, observable values and the end points."""
    fields = network_fields(initial, final, problem)
    coords = dict(time=("time", np.asarray(times, np.float64)), **fields.coords)
    data = observable_variables(observables, values, ("time",))
    data.update(fields.data)
    attrs = dict(fields.attrs)
    if options is not None:
        attrs.update({f"flow_{k}": getattr(options, k) for k in options.__dataclass_fields__})
    attrs.update(info or {})
    return dataset(data, coords, attrs)


def provenance() -> dict:
    """Versions and creation time, so a file says how it was made."""
    return dict(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        gflow_version=__version__,
        jax_version=jax.__version__,
        diffrax_version=diffrax.__version__,
        equinox_version=equinox.__version__,
    )


def save(ds: xr.Dataset, path: str | os.PathLike, *, stage: str | None = None) -> None:
    """Write `ds` to netCDF atomically: an interrupted write leaves no half file.
    (`stage`: a test pause point between the write and the rename, `gflow.files.pause_point`.)"""
    ds = ds.copy()
    ds.attrs = {k: _attr(v) for k, v in ds.attrs.items()}
    with atomic_path(path, stage=stage) as tmp:
        ds.to_netcdf(tmp, engine=ENGINE)


_MUST_HOLD = {  # what a file of each kind holds: a dimension, variables, attributes
    "flow": ("time", ("weights_initial", "weights_final", "p"), ("kind", "depth", "widths", "lam", "Lam", "a")),
    "descent": ("step_size", ("status", "weights_initial", "weights_final", "p"),
                ("kind", "depth", "widths", "lam", "Lam", "a", "method")),
    "chunk": ("point", ("status",), ("chunk",)),
}
_METHOD = {"flow": "gradient_flow", "descent": "gradient_descent"}
_WHAT = {"flow": "gradient-flow trajectory", "descent": "gradient-descent Dataset", "chunk": "sweep chunk"}


def load(path: str | os.PathLike, expect: str | None = None) -> xr.Dataset:
    """Read a netCDF file written by [`save`][] (fully into memory; the file is closed).

    With `expect` ("flow": a GF trajectory, "descent": a GD Dataset, "chunk": a sweep
    chunk), also check that the file holds what such a Dataset must (its dimension,
    variables and attributes; a GF trajectory's networks must rebuild).

    Raises `FileNotFoundError` when there is no file, and `gflow.files.DamagedFileError`
    (a `ValueError` naming the file) when it cannot be read as such: truncated, not
    netCDF, or missing what it must hold.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "no such file", path)
    try:
        with xr.open_dataset(path, engine=ENGINE) as ds:
            ds = ds.load()
    except Exception as e:  # noqa: BLE001 (h5py, h5netcdf and xarray raise many kinds)
        raise DamagedFileError(path, f"damaged or not netCDF: cannot be read ({_first_line(e)})") from None
    if expect is not None:
        _check_holds(ds, path, expect)
    return ds


def _first_line(e: Exception) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


def _check_holds(ds: xr.Dataset, path: str, expect: str) -> None:
    dim, variables, attrs = _MUST_HOLD[expect]
    missing = [f"dimension {dim}"] if dim not in ds.dims else []
    missing += [f"variable {v}" for v in variables if v not in ds.variables]
    missing += [f"attribute {a}" for a in attrs if a not in ds.attrs]
    what = _WHAT[expect]
    missing += [f"number {a}" for a in ("lam", "Lam", "a", "depth")
                if a in attrs and a in ds.attrs and not isinstance(ds.attrs[a], int | float | np.number)]
    if missing:
        raise DamagedFileError(path, f"not a {what} written by gflow (no {', '.join(missing)})")
    method = ds.attrs.get("method", _METHOD.get(expect))
    if method != _METHOD.get(expect, method):
        raise DamagedFileError(path, f"not a {what}: it holds {method}")
    if expect == "flow":
        try:
            model_from(ds, "initial"), model_from(ds, "final")
        except Exception as e:  # noqa: BLE001
            raise DamagedFileError(path, f"damaged {what}: its networks do not rebuild ({_first_line(e)})") from None
