"""A trajectory as an `xarray.Dataset`, and its netCDF files (written atomically).

Layout:
- coordinates `time` (GF time; GD step k sits at t = kη), `layer` (1..L), `interface`
  (k for the pair (W_k, W_{k+1})), `feature` (1..d);
- one variable per observable, on `time` and the observable's own dims;
- `weights_initial` and `weights_final` on (`layer`, `row`, `col`), each layer padded with
  NaN to the largest shape, and `p` on `output`;
- `attrs`: the problem's constants (lam, Lam, a, pi_star_norm, R_min, n, d), the network
  (kind, depth, widths), solver settings, status, step counts and provenance. Attribute
  values are numbers or strings only (netCDF's rule); lists are stored as JSON.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import numpy as np
import xarray as xr

from .files import atomic_path
from .models import DeepLinear, MLP, Residual, from_layers

ENGINE = "h5netcdf"


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
    return from_layers(layers, ds["p"].values, ds.attrs["kind"])


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


def build(times, values, observables, initial, final, problem, *, options=None, info=None) -> xr.Dataset:
    """Assemble the Dataset from save times, observable values and the end points."""
    L = initial.depth
    coords = dict(
        time=("time", np.asarray(times, np.float64)),
        layer=("layer", np.arange(1, L + 1)),
        interface=("interface", np.arange(1, L)),
        feature=("feature", np.arange(1, problem.d + 1)),
    )
    data = {}
    for o in observables:
        v = np.asarray(values[o.name], np.float64)
        data[o.name] = (("time", *o.dims), v, {"description": o.description})
    data["weights_initial"] = (("layer", "row", "col"), weights_array(initial))
    data["weights_final"] = (("layer", "row", "col"), weights_array(final))
    data["p"] = (("output",), np.asarray(initial.p, np.float64))
    data["pi_star"] = (("feature",), np.asarray(problem.pi_star))
    attrs = dict(problem.constants())
    attrs.update(kind=model_kind(initial), depth=L, widths=list(initial.widths))
    if options is not None:
        attrs.update({f"flow_{k}": getattr(options, k) for k in options.__dataclass_fields__})
    attrs.update(info or {})
    attrs.update(provenance())
    ds = xr.Dataset(data, coords=coords)
    ds.attrs = {k: _attr(v) for k, v in attrs.items()}
    return ds


def provenance() -> dict:
    """Versions and creation time, so a file says how it was made."""
    import diffrax
    import equinox
    import jax

    from . import __version__

    return dict(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        gflow_version=__version__,
        jax_version=jax.__version__,
        diffrax_version=diffrax.__version__,
        equinox_version=equinox.__version__,
    )


def save(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write `ds` to netCDF atomically: an interrupted write leaves no half file."""
    ds = ds.copy()
    ds.attrs = {k: _attr(v) for k, v in ds.attrs.items()}
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine=ENGINE)


def load(path: str | os.PathLike) -> xr.Dataset:
    """Read a trajectory written by [`save`][] (fully into memory; the file is closed)."""
    with xr.open_dataset(os.fspath(path), engine=ENGINE) as ds:
        return ds.load()
