"""The finite-step flows in scenarios, `gflow run` and `gflow sweep`: keys, run folders,
figures, checks, and the central-flow point of a sweep.

The networks are the paper's MLP with the observables and save count of tests/test_dynamics.py,
so that every central flow of the session shares one compilation.
"""

from __future__ import annotations

import dataclasses
import textwrap

import numpy as np
import pytest

import gflow
from gflow import experiment, sweep, theory
from gflow import scenario as scen
from gflow.scenario import ScenarioError
from tests.test_dynamics import CENTRAL_OBSERVABLES

PAPER = """
name = "{name}"
[data]
kind = "gaussian"
n = 50
d = 5
[model]
kind = "mlp"
depth = 10
width = 5
init = {{ kind = "small_scale", scale = 0.35 }}
[flow]
t_max = 200.0
saves = 200
stop_at_excess_risk = 1e-12
[record]
observables = {observables}
"""


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def paper(name, extra=""):
    return PAPER.format(name=name, observables=list(CENTRAL_OBSERVABLES)).replace("'", '"') + textwrap.dedent(extra)


@pytest.mark.parametrize("kw, message", [
    (dict(dynamics="central"), "needs a finite positive step_size"),
    (dict(dynamics="modified", step_size=-0.1), "needs a finite positive step_size"),
    (dict(step_size=0.1), "gradient flow has none"),
    (dict(dynamics="central", step_size=0.1, clock="arclength"), "runs in plain time"),
    (dict(dynamics="central", step_size=0.1, edge_eigenpairs=6), "edge_eigenpairs"),
    (dict(dynamics="newton"), "dynamics must be one of"),
])
def test_flow_options_refuse_incoherent_dynamics(kw, message):
    with pytest.raises(ValueError, match=message):
        gflow.FlowOptions(**kw)


def test_scenario_keys(tmp_path):
    sc = scen.load(write(tmp_path, paper("keys", """
        [descent]
        step_sizes = [0.07]
        steps = 10
        central = true
        modified = true
        """).replace('saves = 200', 'saves = 200\ndynamics = "central"\nstep_size = 0.07\nedge_eigenpairs = 3')))
    opts = sc.flow.options()
    assert (opts.dynamics, opts.step_size, opts.edge_eigenpairs) == ("central", 0.07, 3)
    assert sc.descent.central and sc.descent.modified
    with pytest.raises(ScenarioError, match="flow.*step_size"):
        scen.load(write(tmp_path, paper("bad").replace("saves = 200", 'saves = 200\ndynamics = "modified"'), "bad.toml"))
    with pytest.raises(ScenarioError, match="descent.centrall: unknown key"):
        scen.load(write(tmp_path, paper("typo", "[descent]\nstep_sizes = [0.1]\nsteps = 5\ncentrall = true\n"), "t.toml"))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """`gflow run` with both flows beside GD at η = 0.07 (2/η below GF's final sharpness)."""
    tmp = tmp_path_factory.mktemp("run")
    path = write(tmp, paper("eos", """
        [descent]
        step_sizes = [0.07]
        steps = 400
        record_every = 4
        observables = ["risk", "excess_risk", "sharpness"]
        central = true
        modified = true
        """))
    experiment.execute(path, tmp / "out")
    return tmp / "out"


@pytest.mark.slow
def test_run_folder_holds_the_flows_beside_gd(run_folder):
    run = gflow.load_run(run_folder)
    assert set(run.flows) == {"central-eta0.07", "modified-eta0.07"}
    c = run.flows["central-eta0.07"]
    assert (c.attrs["dynamics"], c.attrs["step_size"]) == ("central", 0.07)
    assert float(c.time[-1]) == pytest.approx(400 * 0.07)  # GD's horizon
    for stem in ("gd_risk_vs_time", "gd_sharpness_vs_time", "gd_distance_to_flow", "gd_sharpness_vs_step_size"):
        assert str(run_folder / "figures" / f"{stem}.png") in run.figures
    summary = (run_folder / "summary.md").read_text()
    assert "central flow S_final" in summary and "max ‖W_GD − W_central‖" in summary
    names = {ch.name: ch.verdict for ch in run.checks}
    assert names["central_edge_stability[central-eta0.07]"] == "holds"
    assert names["modified_energy_identity[modified-eta0.07]"] == "holds"
    assert theory.exit_code(run.checks) == 0


@pytest.mark.slow
def test_distance_to_a_flow_matches_the_stored_end_points(run_folder):
    """The last `distance_to_<flow>` (dense solution at t = 400η) against the distance between
    GD's and the flow's stored final weights (a separate solve)."""
    run = gflow.load_run(run_folder)
    gd_end = run.descent.weights_final.values[0, 0]
    for name in ("central", "modified"):
        end = run.flows[f"{name}-eta0.07"].weights_final.values
        ok = np.isfinite(end) & np.isfinite(gd_end)
        d = float(run.descent[f"distance_to_{name}"].values[0, 0, -1])
        assert d == pytest.approx(float(np.linalg.norm((end - gd_end)[ok])), rel=1e-6)


@pytest.mark.slow
def test_sweep_has_central_and_modified_flow_points(tmp_path):
    """Two scales, η = 0.07: GD's final sharpness beside the central and the modified flow's
    predictions, in the Dataset, runs.csv and the sharpness figures."""
    path = write(tmp_path, paper("eos_sweep", """
        [descent]
        step_sizes = [0.07]
        steps = 300
        gf = false
        central = true
        modified = true
        observables = []
        [sweep]
        "model.init.scale" = [0.3, 0.35]
        """).replace('t_max = 200.0', 't_max = 200.0\nspacing = "linear"'))
    result = sweep.run(path, tmp_path / "out")
    ds = result.dataset
    assert ds.central_final_sharpness.dims == ds.modified_final_sharpness.dims == ("scale", "step_size", "seed")
    # scale 0.35 reaches the edge within 300 steps and the flow holds λ₁ at 2/η there; the
    # smaller scale is still below it at t = 21, and no point ever passes it
    final = ds.central_final_sharpness.values
    assert np.all(final <= 2 / 0.07 * (1 + 1e-5))
    np.testing.assert_allclose(ds.central_final_sharpness.sel(scale=0.35).values, 2 / 0.07, rtol=1e-5)
    # the modified flow of one point is the flow `gflow.solve` integrates from that network over
    # GD's horizon 300η, recording other observables: W to the round-off of the solve (~1e-12
    # relative), so the sharpness to 1e-10 and the excess risk E = eᵀΣ̂e (‖e‖ ≈ 1e-6 at the
    # end) to 2√(EΛ)·1e-12
    point = scen.expand(scen.load(path))[1][1]
    prob = point.build_problem()
    opts = dataclasses.replace(point.flow.options(), dynamics="modified", step_size=0.07, t_max=300 * 0.07,
                               t_first=None, clock="plain")
    one = gflow.solve(point.build_model(prob.d, seed=0), prob, opts, ["excess_risk", "sharpness"])
    assert str(ds.modified_status.sel(scale=0.35).values[0, 0]) == one.attrs["status"]
    np.testing.assert_allclose(ds.modified_final_sharpness.sel(scale=0.35).values[0, 0], float(one.sharpness[-1]),
                               rtol=1e-10)
    E = float(one.excess_risk[-1])
    gap = abs(float(ds.modified_final_excess_risk.sel(scale=0.35).values[0, 0]) - E)
    assert gap <= 2 * np.sqrt(E * float(prob.Lam)) * 1e-12, gap
    columns = set(result.runs.columns)
    assert {"central_status", "central_final_sharpness", "central_final_predicted_risk"} <= columns
    assert {"modified_status", "modified_final_sharpness", "modified_final_excess_risk"} <= columns
    assert any("sharpness_vs_scale" in p for p in result.figures)
