import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import gflow
from gflow import flow, models, observables as obs, problem, solver
from tests.test_dynamics import flat


def test_paper_size_converges_to_pi_star(paper_run, paper_problem):
    ds = paper_run
    assert ds.attrs["status"] == "converged"
    assert float(ds.excess_risk[-1]) <= 1e-10
    np.testing.assert_allclose(ds.end_to_end[-1] if "end_to_end" in ds else
                               gflow.end_to_end(gflow.trajectory.model_from(ds)),
                               paper_problem.pi_star, atol=1e-6)
    assert float(ds.distance_to_pi_star[-1]) <= 1e-6


def test_conserved_quantities_drift_below_solver_tolerance(paper_run):
    # rtol 1e-8, atol 1e-10 over ~100 steps: the exact invariant moves only by the local
    # errors the controller accepts.
    assert float(paper_run.balance_drift.max()) <= 1e-7


def test_risk_is_non_increasing(paper_run):
    risk = paper_run.risk.values
    # allow round-off at the level of R itself (1e-15 relative)
    assert np.all(np.diff(risk) <= 1e-14 * risk[:-1])


def test_energy_identity(paper_mlp, paper_problem):
    """R(0) − R(t1) = ∫₀^{t1} ‖∇R‖² dt, the integral taken on the dense solution."""
    opts = gflow.FlowOptions(rtol=1e-10, atol=1e-12, t_max=20.0, saves=10, stop_at_excess_risk=0.0)
    sol = flow.dense_solution(paper_mlp, paper_problem, opts)
    t1 = 20.0
    # Gauss–Legendre on log-spaced panels (the motion is fast early and slow late).
    edges = np.concatenate([[0.0], np.geomspace(1e-4, t1, 400)])
    nodes, weights = np.polynomial.legendre.leggauss(8)
    ts, ws = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        ts.append((b - a) / 2 * nodes + (a + b) / 2)
        ws.append((b - a) / 2 * weights)
    ts, ws = np.concatenate(ts), np.concatenate(ws)
    values = np.asarray(jax.vmap(lambda t: obs.grad_norm_sq(sol.model_at(t), paper_problem))(jnp.asarray(ts)))
    integral = float(values @ ws)
    drop = float(obs.risk(paper_mlp, paper_problem) - obs.risk(sol.model_at(t1), paper_problem))
    assert integral == pytest.approx(drop, rel=1e-6)


def test_solve_and_interpolate_is_the_solve_with_its_interpolant(monkeypatch):
    """The modified flow in segments of 16 steps (`gflow.watch`): the Dataset is `solve`'s
    (the same steps; two programs may round apart), the interpolant passes through every
    save and the final weights (to round-off), is one piece per segment, and agrees with an
    independent `dense_solution` (one segment, its own steps) to the tolerance."""
    from gflow import watch

    monkeypatch.setattr(watch, "SEGMENT_STEPS", 16)
    prob = problem.gaussian(20, 3, seed=0)
    net = models.mlp(jax.random.key(0), models.mlp_widths(3, 3, 3), 0.5)
    opts = gflow.FlowOptions(dynamics="modified", step_size=0.05, rtol=1e-10, atol=1e-12, t_max=30.0, saves=25)
    ds, dense = flow.solve_and_interpolate(net, prob, opts, ["risk", "end_to_end"])
    plain = flow.solve(net, prob, opts, ["risk", "end_to_end"])
    assert ds.attrs["num_steps"] == plain.attrs["num_steps"] > 3 * 16
    # The saves at fixed times agree to round-off (1e-12). The last is where the stopping event
    # fired, at the end of a step. At rtol 1e-10 the controller's error estimate is near
    # round-off, so two compiled programs size that step apart (1e-5 of t measured on the
    # tests' XLA build); there they differ by at most how far the flow moves in the gap, which
    # the secant over the last two saves bounds (the flow slows down as it converges).
    t, e = ds.time.values, ds.end_to_end.values
    np.testing.assert_array_equal(t[:-1], plain.time.values[:-1])
    np.testing.assert_allclose(e[:-1], plain.end_to_end.values[:-1], rtol=1e-12, atol=1e-14)
    gap = abs(t[-1] - float(plain.time[-1]))
    assert gap <= 1e-4 * t[-1]
    speed = np.abs(e[-1] - e[-2]).max() / (t[-1] - t[-2])
    assert np.abs(e[-1] - plain.end_to_end.values[-1]).max() <= gap * speed + 1e-14
    assert len(dense.phases) == len(dense.starts) > 3 and np.all(np.diff(dense.starts) > 0)
    assert dense.t_final == pytest.approx(float(ds.time[-1]), rel=1e-15)
    at_saves = jax.vmap(lambda t: gflow.end_to_end(dense.model_at(t)))(jnp.asarray(ds.time.values))
    np.testing.assert_allclose(np.asarray(at_saves), ds.end_to_end.values, rtol=1e-12, atol=1e-14)
    final = flat(gflow.trajectory.model_from(ds), prob)
    np.testing.assert_allclose(flat(dense.model_at(dense.t_final), prob), final, rtol=1e-12, atol=1e-14)
    one = flow.dense_solution(net, prob, opts)
    assert len(one.phases) == 1
    for t in (0.3, 3.0, 29.0):
        np.testing.assert_allclose(flat(dense.model_at(t), prob), flat(one.model_at(t), prob), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="arc-length clock"):
        flow.solve_and_interpolate(net, prob, gflow.FlowOptions(clock="arclength"))


def _balanced_rank_one_mlp(d, depth, sigma, key):
    """W_k = σ u_k u_{k−1}ᵀ with unit u_k: W_{k+1}ᵀW_{k+1} = W_kW_kᵀ exactly."""
    keys = jax.random.split(key, depth)
    us = [np.asarray(jax.random.normal(k, (d,))) for k in keys[:-1]]
    us = [u / np.linalg.norm(u) for u in us] + [np.ones(1)]
    v1 = np.asarray(jax.random.normal(keys[-1], (d,)))
    vs = [v1 / np.linalg.norm(v1)] + us[:-1]
    return models.from_layers([sigma * np.outer(u, v) for u, v in zip(us, vs)])


def test_balanced_start_follows_the_end_to_end_ode(paper_problem):
    """Arora, Cohen & Hazan (2018): for a balanced start with d_L = 1 the regressor obeys
    dw/dt = −‖w‖^{2(L−1)/L} (g + (L−1)(g·ŵ)ŵ), g = 2Σ̂(w − π*)."""
    L = 4
    model = _balanced_rank_one_mlp(5, L, 0.6, jax.random.key(11))
    opts = gflow.FlowOptions(rtol=1e-11, atol=1e-13, t_max=30.0, saves=40, stop_at_excess_risk=0.0)
    ds = gflow.solve(model, paper_problem, opts, observables=("end_to_end", "balance_drift"))
    sigma, pi = np.asarray(paper_problem.sigma), np.asarray(paper_problem.pi_star)

    def rhs(t, w):
        g = 2 * sigma @ (w - pi)
        nw = np.linalg.norm(w)
        wh = w / nw
        return -(nw ** (2 * (L - 1) / L)) * (g + (L - 1) * (g @ wh) * wh)

    ref = solve_ivp(rhs, (0, 30.0), np.asarray(gflow.end_to_end(model)), method="DOP853",
                    t_eval=ds.time.values, rtol=1e-13, atol=1e-14)
    assert ref.success
    np.testing.assert_allclose(ds.end_to_end.values, ref.y.T, atol=1e-6)
    assert float(ds.balance_drift.max()) < 1e-8


@pytest.mark.slow
def test_small_scale_plateau_is_crossed_in_a_few_hundred_steps(paper_problem):
    model = models.mlp(jax.random.key(0), models.mlp_widths(5, 10, 5), 0.02)
    opts = gflow.FlowOptions(t_max=1e14, saves=150, stop_at_excess_risk=1e-12)
    ds = gflow.solve(model, paper_problem, opts, observables=("excess_risk", "balance_drift"))
    assert ds.attrs["status"] == "converged"
    assert 1e8 < ds.attrs["t_final"] < 1e13
    assert ds.attrs["num_steps"] < 1000
    assert float(ds.excess_risk[-1]) <= 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("d, depth", [(5, 40), (10, 20), (20, 10)])
def test_residual_networks_converge(d, depth):
    prob = problem.gaussian(4 * d + 20, d, seed=d)
    model = models.residual(jax.random.key(depth), d, depth, 0.5)
    ds = gflow.solve(model, prob, gflow.FlowOptions(t_max=1e4, saves=60), observables=obs.DEFAULT)
    assert ds.attrs["status"] == "converged"
    for name in obs.DEFAULT:
        assert np.all(np.isfinite(ds[name].values)), name
    assert float(ds.balance_drift.max()) < 1e-6
    assert ds.sizes["layer"] == depth


def test_statuses_are_recorded_not_raised(paper_problem, paper_mlp):
    short = gflow.solve(paper_mlp, paper_problem, gflow.FlowOptions(t_max=0.5, saves=5), ("risk",))
    assert short.attrs["status"] == "reached_t_max"
    assert short.time.values[-1] == pytest.approx(0.5)
    capped = gflow.solve(paper_mlp, paper_problem, gflow.FlowOptions(t_max=1e4, saves=5, max_steps=3), ("risk",))
    assert capped.attrs["status"] == "max_steps"


def test_a_flow_that_overflows_on_the_first_trial_step_still_converges():
    """Diffrax's automatic first step is 0.01 whatever the flow; at S(0) ≈ 1.1e3 (h·S ≈ 11,
    past Tsit5's stability limit ≈ 3) the trial state overflows. `solver.Controller` rejects
    and shrinks that step instead of turning it into a NaN step size that stalls the solve
    at t = 0 until max_steps (what Diffrax's own controller does)."""
    prob = problem.gaussian(50, 5, noise=0.0, seed=0)
    net = models.mlp(jax.random.key(0), models.mlp_widths(5, 8, 5), scale=0.6)
    ds = gflow.solve(net, prob, gflow.FlowOptions(t_max=1e4, saves=20), ("risk", "sharpness"))
    assert 0.01 * float(ds.sharpness[0]) > 3
    assert ds.attrs["status"] == "converged" and ds.attrs["num_steps"] < 1000
    assert np.all(np.diff(ds.risk.values) <= 1e-12)


def test_controller_rejects_an_overflowed_trial_step_and_shrinks_it():
    controller = solver.Controller(rtol=1e-8, atol=1e-10)
    y0, y1 = jnp.ones(3), jnp.array([1.0, jnp.inf, 1.0])
    error = jnp.array([0.0, jnp.inf, jnp.nan])
    state = (jnp.asarray(1.0), jnp.asarray(1.0), jnp.asarray(False))
    keep, t0, t1, _, _, _ = controller.adapt_step_size(0.0, 0.01, y0, y1, None, error, 5, state)
    assert not bool(keep) and float(t0) == 0.0
    assert float(t1) == pytest.approx(0.01 * controller.factormin)


def test_save_times_are_trimmed_after_the_event(paper_run):
    t = paper_run.time.values
    assert np.all(np.isfinite(t)) and np.all(np.diff(t) > 0)
    assert t[0] == 0.0 and t[-1] == pytest.approx(paper_run.attrs["t_final"])
    assert np.all(np.isfinite(paper_run.sharpness.values))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(solver="euler"), "unknown solver"),
        (dict(rtol=0.0), "rtol"),
        (dict(atol=-1.0), "atol"),
        (dict(t_max=float("nan")), "t_max"),
        (dict(saves=1), "saves"),
        (dict(t_first=10.0, t_max=5.0), "t_first"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gflow.FlowOptions(**kwargs)


def test_implicit_solver_agrees_with_tsit5(paper_problem):
    model = models.mlp(jax.random.key(1), models.mlp_widths(5, 3, 5), 0.5)
    opts = dict(rtol=1e-9, atol=1e-11, t_max=5.0, saves=6, stop_at_excess_risk=0.0)
    a = gflow.solve(model, paper_problem, gflow.FlowOptions(**opts), ("end_to_end",))
    b = gflow.solve(model, paper_problem, gflow.FlowOptions(solver="kvaerno5", **opts), ("end_to_end",))
    np.testing.assert_allclose(a.end_to_end.values, b.end_to_end.values, atol=1e-6)


def test_input_size_must_match_the_data(paper_problem):
    model = models.mlp(jax.random.key(1), [4, 3, 1], 0.5)
    with pytest.raises(models.ShapeError, match="d = 5"):
        gflow.solve(model, paper_problem)


def test_two_saves_are_0_and_t_max():
    """With saves = 2 the one save after t = 0 is t_max, for either spacing (the solve runs to t_max)."""
    for spacing in ("log", "linear"):
        np.testing.assert_array_equal(gflow.FlowOptions(saves=2, t_max=50.0, spacing=spacing).save_times(), [0.0, 50.0])


def test_release_if_crowded_clears_compiled_programs_past_the_limit():
    from gflow import compilation

    f = jax.jit(lambda x: x + 1)
    f(1.0)
    assert not compilation.release_if_crowded(limit=10**9) and f._cache_size() == 1
    assert compilation.release_if_crowded(limit=1) and f._cache_size() == 0
