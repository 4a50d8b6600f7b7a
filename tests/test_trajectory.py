import numpy as np
import pytest
import xarray as xr

import gflow
from gflow import trajectory


def test_dataset_layout(paper_run):
    ds = paper_run
    assert ds.sharpness.dims == ("time",)
    assert ds.singular_values.dims == ("time", "layer")
    assert ds.alignment.dims == ("time", "interface")
    assert ds.sizes["layer"] == 10 and ds.sizes["interface"] == 9
    for key in ("lam", "Lam", "a", "pi_star_norm", "R_min", "status", "num_steps", "flow_rtol", "widths"):
        assert key in ds.attrs, key


def test_save_load_round_trip_is_exact(paper_run, tmp_path):
    path = tmp_path / "run" / "trajectory.nc"
    trajectory.save(paper_run, path)
    back = trajectory.load(path)
    xr.testing.assert_identical(back.drop_attrs(), paper_run.drop_attrs())
    assert back.attrs["status"] == paper_run.attrs["status"]
    final = trajectory.model_from(back, "final")
    for a, b in zip(final.layers(), trajectory.model_from(paper_run, "final").layers()):
        np.testing.assert_array_equal(a, b)
    assert float(gflow.observables.excess_risk(final, gflow.problem.gaussian(50, 5, seed=0))) <= 1e-10


def test_interrupted_save_leaves_no_file(paper_run, tmp_path, monkeypatch):
    path = tmp_path / "trajectory.nc"

    def broken(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    with pytest.raises(KeyboardInterrupt):
        trajectory.save(paper_run, path)
    assert list(tmp_path.iterdir()) == []


def test_residual_model_round_trips(tmp_path):
    import jax

    prob = gflow.problem.gaussian(30, 4, seed=1)
    model = gflow.models.residual(jax.random.key(0), 4, 3, 0.3)
    ds = gflow.solve(model, prob, gflow.FlowOptions(t_max=1.0, saves=3), ("risk",))
    back = trajectory.model_from(ds, "initial")
    np.testing.assert_allclose(back.V, model.V, atol=1e-15)
    np.testing.assert_array_equal(back.p, model.p)
