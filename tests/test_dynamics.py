"""The continuous-time models of GD at a finite step size (theory.md §8) against independent
computations: GD itself, iterated here step by step on the flat parameters; R̃ differentiated
directly; gradient flow; dense Hessians.

Every central flow here is the paper's MLP (n = 50, d = 5, L = 10) with the same recorded
observables, so they share one compilation. Its GF ends at S ≈ 33.2: GD with 2/η above that
never reaches the edge (η = 0.02), below it trains at the edge (η = 0.07).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import gflow
from gflow import flow, linalg, models, observables as obs, problem, theory
from gflow.dynamics import ModifiedFlow

CENTRAL_OBSERVABLES = ("excess_risk", "distance_to_pi_star")
"""What every central flow of the tests records (one compilation; R = R_min + excess)."""


def central(model, prob, eta, t_max):
    """The central flow at η up to t_max, 200 linear saves (one compilation for all)."""
    opts = gflow.FlowOptions(t_max=t_max, saves=200, spacing="linear", dynamics="central", step_size=eta)
    return gflow.solve(model, prob, opts, CENTRAL_OBSERVABLES)


@eqx.filter_jit
def _descend(x0, eta, steps_per_record, records: int, f_args):
    """Plain GD x ← x − η∇f(x) on the flat parameters: (x, R) at records 0, r, 2r, …"""
    f = _risk(*f_args)

    def chunk(x, _):
        x_next = jax.lax.fori_loop(0, steps_per_record, lambda i, z: z - eta * jax.grad(f)(z), x)
        return x_next, (x_next, f(x_next))

    _, (xs, rs) = jax.lax.scan(chunk, x0, None, length=records)
    return jnp.concatenate([x0[None], xs]), jnp.concatenate([f(x0)[None], rs])


def _risk(model, prob):
    return obs.flat_risk(model, prob)[0]


def gd(model, prob, eta, steps, every=1):
    """GD's flat parameters and risks at steps 0, every, 2·every, …, steps (records of `steps // every`)."""
    x0 = obs.flat_risk(model, prob)[1]
    xs, rs = _descend(x0, eta, every, steps // every, (model, prob))
    return np.asarray(xs), np.asarray(rs), np.arange(0, steps + 1, every) * eta


def sharpness(model, prob, flat):
    f = obs.flat_risk(model, prob)[0]
    return np.linalg.eigvalsh(np.asarray(linalg.dense_hessian(f, jnp.asarray(flat))))[::-1]


def flat(model, prob) -> np.ndarray:
    return np.asarray(obs.flat_risk(model, prob)[1])


# --- the modified flow ----------------------------------------------------------------------


def test_modified_field_is_minus_the_gradient_of_the_modified_risk(paper_problem, paper_mlp):
    """−∇R̃ by reverse-over-reverse differentiation of R + (η/4)‖∇R‖² on the flat parameters,
    against the flow's field (a Hessian-vector product), and dẼ/dt = ‖∇R̃‖²."""
    eta = 0.05
    f, x = obs.flat_risk(paper_mlp, paper_problem)
    x = x + 0.1 * jax.random.normal(jax.random.key(1), x.shape)
    params, static = eqx.partition(paper_mlp, models.trainable(paper_mlp))
    params = ravel_pytree(params)[1](x)
    want = -jax.grad(lambda z: f(z) + 0.25 * eta * jnp.sum(jax.grad(f)(z) ** 2))(x)
    dW, dE = ModifiedFlow(jnp.asarray(eta)).field(0.0, (params, 0.0), (static, paper_problem, paper_mlp))
    np.testing.assert_allclose(ravel_pytree(dW)[0], want, rtol=1e-10, atol=1e-13)
    assert float(dE) == pytest.approx(float(want @ want), rel=1e-12)


@pytest.mark.slow
def test_modified_flow_follows_gd_to_second_order(paper_problem, paper_mlp):
    """Over t ∈ [0, 5] (the escape from the plateau included) at η = 0.02/2^j: the largest
    distance from GD falls like η² for the modified flow and like η for GF."""
    T, out = 5.0, {"gradient_flow": [], "modified": []}
    etas = [0.02 / 2**j for j in range(4)]
    for eta in etas:
        steps = int(round(T / eta))
        xs, _, times = gd(paper_mlp, paper_problem, eta, steps, every=steps // 50)
        for name in out:
            kw = dict(dynamics=name, step_size=eta) if name == "modified" else {}
            sol = flow.dense_solution(paper_mlp, paper_problem,
                                      gflow.FlowOptions(rtol=1e-11, atol=1e-13, t_max=T, stop_at_excess_risk=0.0, **kw))
            ref = np.stack([flat(sol.model_at(t), paper_problem) for t in times])
            out[name].append(np.linalg.norm(xs - ref, axis=1).max())
    slope = {k: np.polyfit(np.log(etas), np.log(v), 1)[0] for k, v in out.items()}
    assert slope["modified"] >= 1.8, (slope, out)
    assert 0.9 <= slope["gradient_flow"] <= 1.1, (slope, out)
    assert out["modified"][-1] < 0.01 * out["gradient_flow"][-1]


# --- the central flow -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def stable(paper_problem, paper_mlp):
    return central(paper_mlp, paper_problem, 0.02, 20.0)


def test_central_flow_is_gradient_flow_below_the_edge(stable, paper_problem, paper_mlp):
    """2/η = 100 is never reached: no eigenvalue is held, X = 0, and the trajectory is GF's
    (a separate GF solve at the same save times) to solver tolerance."""
    gf = gflow.solve(paper_mlp, paper_problem, gflow.FlowOptions(t_max=20.0, saves=200, spacing="linear"),
                     CENTRAL_OBSERVABLES)
    assert stable.attrs["status"] == gf.attrs["status"] == "converged"
    assert np.all(stable.edge_active.values == 0) and np.all(stable.edge_trace.values == 0)
    assert float(stable.edge_sharpness.max()) < 0.5 * 2 / 0.02
    n = min(stable.sizes["time"], gf.sizes["time"]) - 1  # the last save is each solve's own end
    np.testing.assert_allclose(stable.time.values[:n], gf.time.values[:n])
    np.testing.assert_allclose(stable.excess_risk.values[:n], gf.excess_risk.values[:n], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(stable.predicted_risk.values, stable.excess_risk.values + float(gf.attrs["R_min"]),
                               rtol=1e-14)
    w_c, w_g = (gflow.trajectory.model_from(d, "final") for d in (stable, gf))
    assert float(jnp.linalg.norm(models.end_to_end(w_c) - models.end_to_end(w_g))) < 1e-6


@pytest.fixture(scope="module")
def edge_case(paper_problem, paper_mlp):
    """GD at η = 0.07 for 1500 steps (t = 105, where both have converged) and the central
    flow over the same time."""
    eta, steps = 0.07, 1500
    xs, rs, times = gd(paper_mlp, paper_problem, eta, steps)
    return eta, xs, rs, times, central(paper_mlp, paper_problem, eta, steps * eta)


def windowed_gap(rs, times, ds, window=20) -> float:
    """The largest gap between GD's risk and the central flow's predicted risk, both averaged
    over a sliding window of `window` GD steps, as a fraction of GD's total risk drop.

    The same average is applied to the prediction (a smooth curve), so that the comparison
    does not charge the central flow for the window smearing the fast escape from the plateau."""
    pred = np.interp(times, ds.time.values, ds.predicted_risk.values)
    k = np.ones(window) / window
    inner = slice(window // 2, rs.size - window // 2)
    gap = np.abs(np.convolve(rs, k, "same") - np.convolve(pred, k, "same"))[inner]
    return float(gap.max() / (rs[0] - rs[-1]))


@pytest.mark.slow
def test_gd_trains_at_the_edge_there(edge_case, paper_problem, paper_mlp):
    """The case is what it claims: GD's sharpness rises to 2/η, and its loss oscillates."""
    eta, xs, rs, times, _ = edge_case
    late = sharpness(paper_mlp, paper_problem, xs[1000])[0]
    assert abs(late * eta / 2 - 1) < 0.05
    d = np.diff(rs[100:400])
    assert np.sum(d[1:] * d[:-1] < 0) > 50  # the risk goes up and down, step after step


@pytest.mark.slow
def test_central_flow_at_the_edge(edge_case, paper_problem, paper_mlp):
    """λ₁ ≤ 2/η within tolerance (and the check says so), the predicted risk within 10% of
    the risk drop of GD's windowed risk, and the final sharpness within 5% of GD's."""
    eta, xs, rs, times, ds = edge_case
    assert np.any(ds.edge_active.values == 1)
    excess = (ds.edge_sharpness.values - 2 / eta) * eta / 2
    assert excess.max() < 1e-6
    check = [c for c in theory.check(ds, paper_problem) if c.name == "central_edge_stability"][0]
    assert check.verdict == "holds", check.note
    assert windowed_gap(rs, times, ds) < 0.10
    s_gd = sharpness(paper_mlp, paper_problem, xs[-1])[0]
    s_cf = sharpness(paper_mlp, paper_problem, flat(gflow.trajectory.model_from(ds, "final"), paper_problem))[0]
    assert abs(s_cf / s_gd - 1) < 0.05
    assert s_cf == pytest.approx(float(ds.edge_sharpness[-1]), rel=1e-10)  # its eigensolver, dense


@pytest.mark.slow
def test_central_flow_at_the_edge_on_other_data(paper_problem):
    """Another data set and initialization of the same shapes (one compilation): the same
    three properties."""
    prob = problem.gaussian(50, 5, seed=1)
    model = models.mlp(jax.random.key(0), models.mlp_widths(5, 10, 5), 0.35)
    eta, steps = 0.0746, 1500
    xs, rs, times = gd(model, prob, eta, steps)
    ds = central(model, prob, eta, steps * eta)
    assert ((ds.edge_sharpness.values - 2 / eta) * eta / 2).max() < 1e-6
    assert windowed_gap(rs, times, ds) < 0.10
    assert abs(float(ds.edge_sharpness[-1]) / sharpness(model, prob, xs[-1])[0] - 1) < 0.05


@pytest.mark.slow
def test_two_eigenvalues_held_at_the_edge(paper_problem):
    """From scale 0.5 at η = 0.035 a second eigenvalue reaches 2/η: both are held (the
    2 × 2 complementarity problem), and the flow ends at a minimizer whose two top Hessian
    eigenvalues (dense) are 2/η."""
    model = models.mlp(jax.random.key(0), models.mlp_widths(5, 10, 5), 0.5)
    eta = 0.035
    ds = central(model, paper_problem, eta, 25.0)
    assert ds.attrs["status"] == "converged" and float(ds.edge_active.max()) == 2
    top = sharpness(model, paper_problem, flat(gflow.trajectory.model_from(ds), paper_problem))
    np.testing.assert_allclose(top[:2], 2 / eta, rtol=1e-6)
    assert top[2] < 2 / eta * 0.99


def test_more_eigenvalues_past_the_edge_than_tracked_is_a_status(paper_problem):
    """Scale 0.5 starts with three eigenvalues above 2/η = 20: with two tracked, the solve
    records its start and the status "edge_limit"."""
    model = models.mlp(jax.random.key(0), models.mlp_widths(5, 10, 5), 0.5)
    ds = central(model, paper_problem, 0.1, 10.0)
    assert ds.attrs["status"] == "edge_limit" and ds.sizes["time"] == 1
