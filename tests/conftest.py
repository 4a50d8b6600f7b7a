import jax
import pytest

import gflow
from gflow import models, problem


@pytest.fixture(scope="session")
def paper_problem():
    """The paper's data at its size: n = 50, d = 5, ‖π*‖ = 1."""
    return problem.gaussian(50, 5, noise=1.0, seed=0)


@pytest.fixture(scope="session")
def paper_mlp():
    """The paper's MLP: L = 10, widths 5, entries N(0, 0.35²)."""
    return models.mlp(jax.random.key(0), models.mlp_widths(5, 10, 5), 0.35)


@pytest.fixture(scope="session")
def paper_run(paper_problem, paper_mlp):
    """GF on the paper's MLP, run to excess risk 1e-14 at rtol 1e-8."""
    opts = gflow.FlowOptions(rtol=1e-8, atol=1e-10, t_max=1e4, saves=200, stop_at_excess_risk=1e-14)
    return gflow.solve(paper_mlp, paper_problem, opts)
