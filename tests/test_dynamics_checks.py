"""The checks of the finite-step flows can fail: a violation planted just past each one's
tolerance is "violated", one just inside it "holds" (as tests/test_verdicts.py does for the
checks of gradient flow); and the GF-only checks say "not applicable" on these flows."""

from __future__ import annotations

import numpy as np
import pytest

import gflow
from gflow import theory
from gflow.dynamics import MODIFIED_RISK
from gflow.solver import ENERGY
from tests.test_dynamics import CENTRAL_OBSERVABLES, central
from tests.test_verdicts import _check, _flips, _setter


@pytest.fixture(scope="module")
def central_run(paper_problem, paper_mlp):
    return central(paper_mlp, paper_problem, 0.07, 20.0)


@pytest.fixture(scope="module")
def modified_run(paper_problem, paper_mlp):
    opts = gflow.FlowOptions(t_max=20.0, saves=200, spacing="linear", dynamics="modified", step_size=0.05)
    return gflow.solve(paper_mlp, paper_problem, opts, CENTRAL_OBSERVABLES)


def _checked(ds, prob, name):
    return lambda: _check(theory.check(ds, prob), name)


def test_clean_finite_step_runs_hold(central_run, modified_run, paper_problem):
    for ds, own in ((central_run, "central_edge_stability"), (modified_run, "modified_energy_identity")):
        checks = {c.name: c for c in theory.check(ds, paper_problem)}
        assert checks[own].verdict == "holds", checks[own].note
        assert not [c.name for c in checks.values() if c.verdict == "violated"]
        for name in ("conservation", "conservation_final_weights", "corollary_converges"):
            assert checks[name].verdict == "not applicable" and "gradient flow's path" in checks[name].note
    names = {c.name for c in theory.check(modified_run, paper_problem)}
    assert "modified_monotone_risk" in names and "central_edge_stability" not in names


def test_central_edge_stability_flips(central_run, paper_problem):
    ds = central_run.copy(deep=True)
    i = ds.sizes["time"] // 2
    _flips(_checked(ds, paper_problem, "central_edge_stability"), _setter(ds, "edge_sharpness", i), upper=True,
           gross=2 / 0.07 * 1.1)


def test_central_edge_stability_needs_a_stable_start(central_run, paper_problem):
    ds = central_run.copy(deep=True)
    ds["edge_sharpness"].values[0] = 2 / 0.07 * 1.01
    assert _check(theory.check(ds, paper_problem), "central_edge_stability").verdict == "assumption not met"


def test_modified_monotone_risk_flips(modified_run, paper_problem):
    ds = modified_run.copy(deep=True)
    r = ds[MODIFIED_RISK].values
    i = ds.sizes["time"] // 3
    _flips(_checked(ds, paper_problem, "modified_monotone_risk"), _setter(ds, MODIFIED_RISK, i, lambda x: r[i - 1] + x),
           upper=True, gross=1e-2)


def test_modified_energy_identity_flips(modified_run, paper_problem):
    ds = modified_run.copy(deep=True)
    r = ds[MODIFIED_RISK].values
    i = 2 * ds.sizes["time"] // 3
    _flips(_checked(ds, paper_problem, "modified_energy_identity"), _setter(ds, ENERGY, i, lambda x: (r[0] - r[i]) + x),
           upper=True, gross=1e-2)


def test_edge_tolerance_decays_with_the_relaxation():
    """The budget counts a step's jump in full at its own save and e^{−κΔt} of it later."""
    from gflow.theory.dynamics_checks import edge_tolerance

    eta = 0.1
    times = np.array([0.0, 1.0, 2.0, 3.0])
    tol = edge_tolerance(times, np.array([1.0, 0.0, 0.0]), 1.0, 1.0, eta, 0.0)
    np.testing.assert_allclose(tol, 10.0 * np.exp(-np.array([0.0, 1.0, 2.0]) / eta), rtol=1e-12)
