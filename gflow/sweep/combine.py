"""The chunks of a sweep combined into one Dataset on the grid, and its table of runs."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import xarray as xr

from .. import trajectory
from .plan import Plan


def combine(the_plan: Plan, chunks: Sequence[xr.Dataset], scenario_name: str | None = None) -> xr.Dataset:
    """One Dataset from the chunk Datasets (in plan order): the points sorted and reshaped
    into the grid, one dimension per sweep key with its values as coordinate."""
    ds = xr.concat(list(chunks), dim="point", data_vars="minimal", coords="minimal", compat="override",
                   join="outer", combine_attrs="drop")
    ds = ds.sortby("point")
    if the_plan.dims:
        sizes = [len(v) for v in the_plan.values]
        data = {}
        for name, var in ds.data_vars.items():
            if name in the_plan.dims:  # e.g. `depth`, swept: its coordinate says it
                continue
            if "point" not in var.dims:
                data[name] = var
                continue
            var = var.transpose("point", ...)
            dims = (*the_plan.dims, *var.dims[1:])
            data[name] = xr.Variable(dims, var.values.reshape(*sizes, *var.shape[1:]), var.attrs)
        coords = {k: v for k, v in ds.coords.items() if "point" not in v.dims}
        coords.update({d: (d, _coordinate(v)) for d, v in zip(the_plan.dims, the_plan.values)})
        ds = xr.Dataset(data, coords=coords)
    else:
        ds = ds.isel(point=0, drop=True)
    attrs = dict(
        scenario=scenario_name or the_plan.name,
        method="sweep",
        sweep_dims=list(the_plan.dims),
        sweep_keys=list(the_plan.keys),
        chunks=[c.id for c in the_plan.chunks],
    )
    prov = trajectory.provenance()
    prov.pop("created", None)  # keep the combined file a function of its chunks
    attrs.update(prov)
    ds.attrs = {k: trajectory._attr(v) for k, v in attrs.items()}
    return ds


def _coordinate(values: Sequence) -> np.ndarray:
    """Swept values as a coordinate: themselves if scalar, else their JSON text."""
    if all(isinstance(v, int | float | str | bool) for v in values):
        return np.asarray(values)
    return np.asarray([json.dumps(v, sort_keys=True) for v in values])


def runs_table(ds: xr.Dataset):
    """One row per GD run (a `pandas.DataFrame`): the swept values, η, seed, status,
    final quantities, initial sharpness and the GF point of the same initialization."""
    dims = [d for d in json.loads(ds.attrs["sweep_dims"])]
    per_run = [v for v in ds.data_vars if set(ds[v].dims) <= {*dims, "step_size", "seed"}]
    table = ds[per_run].to_dataframe().reset_index()
    table = table[table["status"].astype(str) != ""]
    table.insert(len(dims) + 2, "two_over_eta", 2.0 / table["step_size"])
    cols = [*dims, "step_size", "seed", "two_over_eta"] + [c for c in table.columns
                                                        if c not in {*dims, "step_size", "seed", "two_over_eta"}]
    return table[cols].reset_index(drop=True)
