"""Long solves in segments: the same trajectory as one Diffrax call (to solver tolerance),
progress between segments, and stiffness recognized (gflow.watch)."""

import inspect

import jax
import numpy as np
import pytest

import gflow
from gflow import flow, models, problem, solver, watch

OPTIONS = dict(rtol=1e-9, atol=1e-12, t_max=1e4, saves=40, stop_at_excess_risk=1e-12)


@pytest.fixture
def short_segments(monkeypatch):
    monkeypatch.setattr(watch, "SEGMENT_STEPS", 24)
    monkeypatch.setattr(watch, "JUDGE_AFTER_S", 0.0)


def test_segments_follow_the_same_trajectory(prob3, short_segments):
    """Cut every 24 steps, the solve restarts from the state reached (its first step chosen
    anew, as at t = 0): the saves agree with an unsegmented solve to well within rtol = 1e-9
    times the plateau's length (errors of both are ~rtol per unit time), and nothing is
    flagged as stiff."""
    model = models.mlp(jax.random.key(2), models.mlp_widths(3, 3, 3), 0.3)
    opts = gflow.FlowOptions(**OPTIONS)
    lines = []
    seg = flow.solve(model, prob3, opts, ("risk", "excess_risk", "sharpness"), progress=lines.append)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(watch, "SEGMENT_STEPS", 10**6)
        one = flow.solve(model, prob3, opts, ("risk", "excess_risk", "sharpness"))
    assert seg.attrs["status"] == one.attrs["status"] == "converged"
    assert seg.attrs["num_steps"] > 24 and len(lines) >= 1 and lines[0].startswith("t = ")
    grid = one.time.values[:-1]  # the grid saves (the last is the convergence event)
    np.testing.assert_array_equal(seg.time.values[: grid.size], grid)
    np.testing.assert_allclose(seg.risk.values, one.risk.values, rtol=1e-6)
    np.testing.assert_allclose(seg.sharpness.values, one.sharpness.values, rtol=1e-6)
    assert np.all(np.diff(seg.solver_steps.values) >= 0) and seg.solver_steps.values[-1] == seg.attrs["num_accepted_steps"]
    assert seg.attrs["stiffness"] == ""


def test_a_stiff_flow_is_recognized_and_reported(short_segments):
    """Σ̂ with eigenvalues 100 : 1 : 0.01: Tsit5's steps are held near its stability limit
    3/S while the slowest direction needs t ~ 10³; with max_steps = 200 the watch says so
    after a few segments, names the solvers for stiff flows, and the summary carries it."""
    base = problem.gaussian(20, 3, seed=1)
    stiff = problem.Problem.from_data(np.asarray(base.X) * np.array([10.0, 1.0, 0.1]), np.asarray(base.y))
    model = models.mlp(jax.random.key(0), models.mlp_widths(3, 2, 3), 0.1)
    lines, caps = [], []
    integrate, signature = solver.integrate, inspect.signature(solver.integrate)

    def spy(*a, **k):  # the step cap of every segment
        caps.append(signature.bind(*a, **k).arguments["options"].max_steps)
        return integrate(*a, **k)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(solver, "integrate", spy)
        ds = flow.solve(model, stiff, gflow.FlowOptions(t_max=1e4, max_steps=200, saves=20), ("risk",),
                        progress=lines.append)
    assert ds.attrs["status"] == "max_steps" and ds.attrs["num_steps"] == 200
    assert caps == [20] * 10  # one compiled program to the cap (24 then 8 would be two)
    note = ds.attrs["stiffness"]
    assert note.startswith("stiff:") and '"rkc2"' in note and '"kvaerno5"' in note and note in lines
    assert lines.index(note) <= 3  # judged once the steps have settled, within a few segments
    from gflow.experiment import summary

    assert f"| stiffness | {note} |" in summary(ds, [])
    # the advice works: RKC2 converges in 5,000 steps (~3,000 measured) where Tsit5 needs ~130,000
    rkc = flow.solve(model, stiff, gflow.FlowOptions(t_max=1e4, max_steps=5000, saves=20, solver="rkc2"),
                     ("risk",), progress=lines.append)
    assert rkc.attrs["status"] == "converged" and rkc.attrs["stiffness"] == ""


@pytest.mark.parametrize("max_steps, expected", [(100_000, 2000), (5000, 1250), (2048, 2048), (300, 300),
                                                 (2 * 2039, 2039), (4099, 2048), (4096, 2048)])
def test_segments_are_of_one_length(max_steps, expected):
    """Segments of a divisor of max_steps from 1024 to 2048 (4099 is prime: none, and its last
    segment is shorter)."""
    assert watch.segment_steps(max_steps) == expected
