import jax
import matplotlib
import numpy as np
import pytest

import gflow
from gflow import compare, descent, flow, models, scenario as scen

OPTS = gflow.FlowOptions(rtol=1e-10, atol=1e-12, t_max=200.0, saves=40, stop_at_excess_risk=1e-14)


@pytest.fixture(scope="module")
def small():
    prob = gflow.problem.gaussian(30, 4, seed=3)
    nets = [models.mlp(jax.random.key(s), models.mlp_widths(4, 4, 4), 0.5) for s in range(2)]
    gf, gd = compare.run_comparison(nets, prob, OPTS, [0.01, 0.05, 0.4], 1000,
                                    seeds=[10, 11], observables=("excess_risk", "sharpness", "end_to_end"),
                                    flow_observables=("excess_risk", "sharpness", "end_to_end"))
    return prob, nets, gf, gd


def test_run_comparison_shapes_and_distance(small):
    prob, nets, gf, gd = small
    assert gf.sizes["seed"] == 2 and gd.seed.values.tolist() == [10, 11]
    assert set(np.asarray(gf.status.values).tolist()) == {"converged"}
    d = gd.distance_to_flow
    assert d.dims == ("step_size", "seed", "record")
    assert float(d.isel(record=0).max()) == 0.0  # same initialization
    # independent: GF's dense solution at a GD record time against GD's recorded weights
    sol = flow.dense_solution(nets[1], prob, OPTS)
    i, r = 0, 7
    t = float(gd.time[i, r])
    m = sol.model_at(t)
    ref = np.concatenate([np.asarray(b).ravel() for b in m.weight_blocks()])
    got = np.linalg.norm(gd.weights.values[i, 1, r] - ref)
    assert float(d[i, 1, r]) == pytest.approx(got, rel=1e-10)
    # a smaller step stays closer to the flow
    assert float(d[0].max()) < float(d[1].max())


def test_distance_from_a_flow_dataset_approaches_the_dense_one(small):
    # From a GF Dataset the end-to-end regressor is interpolated linearly in time: with
    # 2001 linear saves on [0, 8] (Δt = 4e-3) the interpolation error is O(Δt²·|w''|),
    # far below the GD–GF distances (≥ 1e-6 where compared), so 2% agreement must hold.
    prob, nets, gf, gd = small
    dense_opts = gflow.FlowOptions(rtol=1e-10, atol=1e-12, t_max=8.0, saves=2001, spacing="linear",
                                   stop_at_excess_risk=0.0)
    g0 = gflow.solve(nets[0], prob, dense_opts, observables=("end_to_end",))
    gd0 = gd.isel(seed=[0])
    approx = compare.distance_to_flow(gd0, g0)
    exact = compare.distance_to_flow(gd0.drop_vars("weights"), flow.dense_solution(nets[0], prob, OPTS))
    early = (gd0.time > 0) & (gd0.time <= 6)
    a, e = approx.where(early).values, exact.where(early).values
    ok = np.isfinite(e) & (e > 1e-6)
    assert ok.sum() > 10
    np.testing.assert_allclose(a[ok], e[ok], rtol=0.02)
    # past t_max of a flow that did not converge there is no reference
    assert np.all(np.isnan(approx.where(gd0.time > 8.01).values[np.isfinite(gd0.time.values[:, None])
                                                                   & (gd0.time.values[:, None] > 8.01)]))


def test_figures_and_table(small, tmp_path):
    prob, nets, gf, gd = small
    figs = compare.figures(gf, gd)
    assert set(figs) >= {"gd_sharpness_vs_step_size", "gd_sharpness_vs_time", "gd_distance_to_pi_star",
                         "gd_divergence", "gd_distance_to_flow"}
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs.values())
    paths = compare.save_figures(gf, gd, tmp_path / "figures")
    assert len(paths) == len(figs)
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = compare.summary_table(gd)
    rows = [line for line in table.splitlines() if line.startswith("| 0.")]
    assert len(rows) == 3
    for eta, row in zip(gd.step_size.values, rows):
        n_conv = int((gd.status.sel(step_size=eta) == "converged").sum())
        assert row.split("|")[3].strip() == str(n_conv)


def test_descent_for_scenario(small):
    prob, *_ = small
    raw = dict(
        name="tiny",
        seed=0,
        data=dict(kind="gaussian", n=30, d=4, seed=3),
        model=dict(kind="mlp", depth=4, width=4, init=dict(kind="small_scale", scale=0.5)),
        flow=dict(t_max=5.0, saves=20),
        descent=dict(step_sizes=[0.02, 0.3], steps=[500, 100], seeds=[0, 1], record_every=50),
    )
    sc = scen.from_dict(raw)
    problem, model = sc.validate_inputs()
    gd, flows = compare.descent_for_scenario(sc, problem, model)
    assert flows == {}  # neither descent.central nor descent.modified
    assert gd.seed.values.tolist() == [0, 1]
    assert "distance_to_flow" in gd and "weights" not in gd
    # t_max was raised to the GD horizon (500·0.02 = 10 > 5): no NaN from a short flow
    assert np.all(np.isfinite(gd.distance_to_flow.sel(step_size=0.02).values))
    same = descent.run(model, problem, [0.02], 500, record_every=50)
    np.testing.assert_allclose(gd.weights_final.values[0, 0], same.weights_final.values[0, 0], rtol=1e-12)
