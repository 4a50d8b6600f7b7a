"""gflow.sweep: the paper's qualitative claims as assertions on sweep outputs (reduced
sizes), resuming an interrupted sweep, and bad sweep files."""

import dataclasses
import os
import sys
import textwrap

import jax
import numpy as np
import pytest
import xarray as xr

from gflow import cli, flow, models, problem, sweep, trajectory
from gflow import scenario as scen
from gflow.scenario import ScenarioError

PAPER_DATA = """
[data]
kind = "gaussian"
n = 50
d = 5
"""


def write(tmp_path, text, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)



@pytest.fixture(autouse=True)
def _no_compilation_cache(monkeypatch):
    """`gflow sweep` turns JAX's persistent cache on; not inside the test session."""
    monkeypatch.setenv("GFLOW_JAX_CACHE", "off")


MLP_GRID = f"""
    name = "mlp"
    {PAPER_DATA}
    [model]
    kind = "mlp"
    depth = 10
    width = 5
    init = {{ kind = "small_scale", scale = 0.25 }}
    [flow]
    t_max = 1e6
    [descent]
    step_sizes = [0.02, 0.05, 0.12, 0.2]
    steps = 4000
    reps = 4
    observables = []
    [sweep]
    "model.init.scale" = [0.25, 0.3]
    """


@pytest.fixture(scope="module")
def mlp_grid(tmp_path_factory):
    """The paper's MLP (n = 50, d = 5, L = 10) at two small scales, four step sizes on both
    sides of η_crit = 2/S_lower ≈ 0.095, four seeds, 4000 steps, with the GF point."""
    tmp = tmp_path_factory.mktemp("mlp")
    return sweep.run(write(tmp, MLP_GRID), tmp / "out").dataset


def test_gd_fails_above_the_critical_step_size(mlp_grid):
    ds = mlp_grid
    eta_crit = float(ds.eta_crit.values[0])
    above = ds.step_size.values > eta_crit
    assert above.any() and (~above).any()
    st = ds.status.values  # (scale, step_size, seed)
    assert not (st[:, above] == "converged").any()
    # and below it GD does converge (the claim is a threshold, not "GD always fails")
    assert (st[:, ~above] == "converged").mean() > 0.8


def test_converged_runs_sit_between_s_lower_and_two_over_eta(mlp_grid):
    ds = mlp_grid
    conv = ds.status.values == "converged"
    assert conv.sum() >= 12
    S = ds.final_sharpness.values[conv]
    eta = np.broadcast_to(ds.step_size.values[None, :, None], conv.shape)[conv]
    S_lower = float(ds.S_lower.values[0])
    # Tolerances: converged means R − R_min ≤ 1e-8, so W is O(1e-4) from a minimizer and S
    # (Lanczos, exact to ~1e-10 here) moves by O(1e-4) relative: 1e-3 below S_lower.
    # A run that converges near the edge of stability sits at 2/η up to the same O(1e-4).
    assert np.all(S >= S_lower * (1 - 1e-3)), (S.min(), S_lower)
    assert np.all(S <= 2 / eta * (1 + 1e-3)), np.max(S * eta / 2)
    # the GF point: a minimizer too, so above S_lower
    gf = ds.gf_final_sharpness.values[ds.gf_status.values == "converged"]
    assert gf.size >= 6 and np.all(gf >= S_lower * (1 - 1e-3))


def test_small_scale_sharpness_barely_depends_on_step_size(mlp_grid):
    """From the smallest scale, GD at η and at 2.5η ends at nearly the same sharpness,
    near that of GF, and well below 2/η: it does not saturate at the edge of stability."""
    ds = mlp_grid.isel(scale=0)
    below = ds.step_size.values < float(ds.eta_crit.values)
    medians = []
    for i in np.flatnonzero(below):
        s = ds.final_sharpness.values[i][ds.status.values[i] == "converged"]
        assert s.size >= 3
        medians.append(np.median(s))
        assert np.all(s < 0.9 * 2 / ds.step_size.values[i])
    medians = np.array(medians)
    assert medians.max() / medians.min() < 1.1  # while 2/η changes by 2.5x
    gf = np.median(ds.gf_final_sharpness.values[ds.gf_status.values == "converged"])
    assert np.all(np.abs(medians / gf - 1) < 0.1)


def test_gf_point_is_the_per_seed_solve(mlp_grid, tmp_path):
    """The GF point of a chunk (every (point, seed) in one vmapped solve) against one
    `flow.solve` per initialization, as the sweep did before.

    Both run Tsit5 with PID control at rtol = 1e-8, atol = 1e-10 on the same ODE, stopped by
    the same event (excess risk < 1e-12 at the end of a step); they differ only in
    round-off (batched and single programs), which the step-size controller turns into
    slightly different steps. Each solve is within its global error of the exact flow (a
    few hundred steps of local errors ≤ rtol, contracted near the minimizer): 1e-5
    relative (1000 rtol) bounds the differences of the stopping time and of the
    sharpness. The excess risk E decays on the last stretch at rate ‖∇R‖²/E ≤ 2S (the
    risk is S-smooth there), so stopping times δt apart change E by at most a factor
    e^{2S·δt}, and ‖w − π*‖ (E ≈ ‖w − π*‖²_Σ̂ there) by e^{S·δt}; 1e-6 more is left for
    round-off. (Observed: 1e-7 relative on t, 1e-6 on E, 1e-11 on S.)"""
    names = ["excess_risk", "distance_to_pi_star", "sharpness"]
    the_plan = sweep.plan(scen.load(write(tmp_path, MLP_GRID)))
    for chunk in the_plan.chunks:
        for raw in chunk.points:
            point = scen.from_dict(raw, chunk.source)
            prob = point.build_problem()
            options = dataclasses.replace(point.flow.options(), saves=2, spacing="linear", t_first=None)
            for seed in mlp_grid.seed.values:
                ds = flow.solve(point.build_model(prob.d, int(seed)), prob, options, names)
                got = mlp_grid.sel(scale=point.model.init.scale, seed=seed)
                assert str(got.gf_status.values) == ds.attrs["status"] == "converged"
                t, t_ref = float(got.gf_t_final), ds.attrs["t_final"]
                assert abs(t - t_ref) <= 1e-5 * t_ref
                S, S_ref = float(got.gf_final_sharpness), float(ds.sharpness.values[-1])
                assert abs(S - S_ref) <= 1e-5 * S_ref
                slack = S_ref * abs(t - t_ref) + 1e-6
                E, E_ref = float(got.gf_final_excess_risk), float(ds.excess_risk.values[-1])
                assert 0 < E < 1e-12 and 0 < E_ref < 1e-12
                assert abs(np.log(E / E_ref)) <= 2 * slack
                D, D_ref = float(got.gf_final_distance_to_pi_star), float(ds.distance_to_pi_star.values[-1])
                assert abs(np.log(D / D_ref)) <= slack


def test_gf_point_solves_the_arclength_clock_one_at_a_time():
    """A member that `flow.solve` integrates on the arc-length clock is solved by it (the
    same values), whatever the batch; the others agree with their own solves as above."""
    from gflow.sweep import gf

    prob = problem.gaussian(20, 3, seed=0)
    nets = [models.mlp(jax.random.key(s), models.mlp_widths(3, 3, 3), 0.5) for s in range(3)]
    plain = flow.FlowOptions(t_max=1e4, saves=2, spacing="linear")
    options = [plain, dataclasses.replace(plain, clock="arclength"), plain]
    names = ["excess_risk", "sharpness"]
    out = gf.gf_point(nets, prob, options, names)
    ref = flow.solve(nets[1], prob, options[1], names)
    assert ref.attrs["clock"] == "arclength"
    assert out["status"][1] == ref.attrs["status"] and out["t_final"][1] == ref.attrs["t_final"]
    assert all(out[n][1] == float(ref[n].values[-1]) for n in names)
    for i in (0, 2):
        ref = flow.solve(nets[i], prob, options[i], names)
        assert out["status"][i] == ref.attrs["status"] == "converged"
        np.testing.assert_allclose(out["sharpness"][i], float(ref.sharpness.values[-1]), rtol=1e-5)
        np.testing.assert_allclose(out["t_final"][i], ref.attrs["t_final"], rtol=1e-5)


def test_residual_threshold_shrinks_like_one_over_depth(tmp_path):
    """The largest η from which GD converges (every seed) roughly halves when L doubles,
    and never exceeds η_crit = 1/(aL)."""
    path = write(tmp_path, f"""
        name = "depth"
        {PAPER_DATA}
        [model]
        kind = "residual"
        depth = 5
        init = {{ kind = "residual", s = 0.25 }}
        [descent]
        step_sizes = {np.round(np.geomspace(0.04, 0.4, 16), 5).tolist()}
        steps = 1000
        reps = 3
        observables = []
        gf = false
        [sweep]
        "model.depth" = [5, 10]
        """)
    ds = sweep.run(path).dataset
    best = {}
    for L in (5, 10):
        sub = ds.sel(depth=L)
        ok = (sub.status.values == "converged").all(axis=-1)
        assert ok[0] and not ok[-1]
        best[L] = sub.step_size.values[ok].max()
        grid_step = ds.step_size.values[1] / ds.step_size.values[0]
        assert best[L] <= float(sub.eta_crit) * grid_step
        assert best[L] >= 0.5 * float(sub.eta_crit)
    assert 1.4 <= best[5] / best[10] <= 2.8, best


# --- chunks and resuming -------------------------------------------------------------------------


TINY = """
    name = "tiny"
    [data]
    kind = "gaussian"
    n = 20
    d = 3
    [model]
    kind = "mlp"
    depth = 3
    width = 3
    init = { kind = "small_scale", scale = 0.5 }
    [descent]
    step_sizes = [0.05, 0.1]
    steps = 200
    reps = 2
    observables = ["excess_risk"]
    gf = false
    [sweep]
    "model.init.scale" = [0.3, 0.4, 0.5, 0.6]
    """


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 4-point grid in 4 chunks, run once to the end; (scenario path, sweep.nc)."""
    tmp = tmp_path_factory.mktemp("tiny")
    path = write(tmp, TINY)
    result = sweep.run(path, tmp / "full", chunk_runs=4)
    assert len(result.plan.chunks) == 4 and len(result.computed) == 4
    return path, trajectory.load(tmp / "full" / "sweep.nc")


def test_resume_recomputes_only_a_deleted_chunk(tiny, tmp_path):
    path, full = tiny
    out = tmp_path / "s"
    first = sweep.run(path, out, chunk_runs=4)
    victim = first.plan.chunks[2].id
    os.remove(out / "chunks" / f"{victim}.nc")
    again = sweep.run(path, out, chunk_runs=4)
    assert again.computed == [victim] and len(again.skipped) == 3
    xr.testing.assert_identical(trajectory.load(out / "sweep.nc"), full)


def test_interrupted_sweep_resumes_without_redoing_chunks(tiny, tmp_path):
    path, full = tiny
    out = tmp_path / "s"

    class Stop(Exception):
        pass

    def stop_after_two(spec, ds):
        if len(os.listdir(out / "chunks")) == 2:
            raise Stop

    with pytest.raises(Stop):
        sweep.run(path, out, chunk_runs=4, on_chunk=stop_after_two)
    done = sorted(f for f in os.listdir(out / "chunks") if f.endswith(".nc"))
    assert len(done) == 2 and not (out / "sweep.nc").exists()
    seen = []
    again = sweep.run(path, out, chunk_runs=4, on_chunk=lambda spec, ds: seen.append(spec.id))
    assert sorted(again.skipped) == sorted(f[:-3] for f in done)
    assert sorted(seen) == sorted(again.computed) and len(seen) == 2 and not set(seen) & set(again.skipped)
    xr.testing.assert_identical(trajectory.load(out / "sweep.nc"), full)
    table = again.runs
    assert len(table) == 4 * 2 * 2  # scales × step sizes × seeds, each once
    assert not table.duplicated(["scale", "step_size", "seed"]).any()


def test_plan_chunks_share_shapes_and_have_stable_ids(tmp_path):
    path = write(tmp_path, TINY.replace('"model.init.scale"', '"model.depth" = [2, 3]\n    "model.init.scale"'))
    s = scen.load(path)
    plan = sweep.plan(s, chunk_runs=8)
    assert plan.dims == ("depth", "scale")
    for chunk in plan.chunks:
        assert len({p["model"]["depth"] for p in chunk.points}) == 1
        assert chunk.runs == 8
    assert [c.id for c in plan.chunks] == [c.id for c in sweep.plan(scen.load(path), chunk_runs=8).chunks]
    assert sorted(i for c in plan.chunks for i in c.index) == list(range(8))


def test_reps_per_step_size_pad_the_seed_axis(tmp_path):
    path = write(tmp_path, TINY.replace("reps = 2", "reps = [1, 3]"))
    result = sweep.run(path)
    ds = result.dataset
    assert ds.seed.values.tolist() == [0, 1, 2]
    ran = ds.status.values != ""
    assert ran[:, 0].sum() == 4 * 1 and ran[:, 1].sum() == 4 * 3
    assert len(result.runs) == 4 * (1 + 3)
    assert np.isnan(ds.final_excess_risk.values[:, 0, 1:]).all()


def test_folder_files_and_figures(tiny):
    path, _ = tiny
    folder = os.path.join(os.path.dirname(path), "full")
    assert {"scenario.toml", "sweep.nc", "runs.csv", "chunks", "figures"} <= set(os.listdir(folder))
    figs = os.listdir(os.path.join(folder, "figures"))
    assert {"sharpness_vs_scale.png", "distance_vs_step_size.png", "evolution_scale-0.3.png"} <= set(figs)


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, message",
    [
        (('"model.init.scale"', '"model.init.scal"'), "no such key"),
        (('"model.init.scale" = [0.3, 0.4, 0.5, 0.6]', '"descent.steps" = [10, 20]'), "cannot be swept"),
        (('"model.init.scale" = [0.3, 0.4, 0.5, 0.6]', '"model.init.scale" = []'), "at least one value"),
        (('"model.init.scale" = [0.3, 0.4, 0.5, 0.6]', '"model.init.scale" = [0.3, 0.3]'), "distinct"),
        (('"model.init.scale" = [0.3, 0.4, 0.5, 0.6]', '"model.init.scale" = [0.3, -1.0]'), "model.init.scale"),
        (('"model.init.scale" = [0.3, 0.4, 0.5, 0.6]', 'seed = [0, 1]'), "one way only"),
        (("reps = 2", "reps = [1, 2, 3]"), "one per step size"),
    ],
)
def test_bad_sweeps_are_scenario_errors(tmp_path, edit, message):
    path = write(tmp_path, TINY.replace(*edit))
    with pytest.raises(ScenarioError, match=message):
        sweep.plan(scen.load(path))


def test_a_sweep_needs_a_descent_section(tmp_path):
    text = TINY.split("[descent]")[0] + '[sweep]\n"model.init.scale" = [0.3]\n'
    with pytest.raises(ScenarioError, match=r"\[descent\]"):
        sweep.plan(scen.load(write(tmp_path, text)))


def test_cli_bad_sweep_is_one_line_and_exit_2(tmp_path, capsys):
    path = write(tmp_path, TINY.replace('"model.init.scale"', '"model.inti.scale"'))
    out = tmp_path / "out"
    assert cli.main(["sweep", path, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sweep.model.inti.scale" in err[0]
    assert not out.exists()


def test_cli_refuses_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert cli.main(["sweep", write(tmp_path, TINY), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "not a sweep folder" in capsys.readouterr().err


def test_cli_without_dask_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails
    assert cli.main(["sweep", write(tmp_path, TINY), "--out", str(tmp_path / "o"), "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'gflow[dask]'" in err[0]
    assert not (tmp_path / "o").exists()
