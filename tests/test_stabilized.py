"""RKC2 (`gflow.stabilized`): second order, stable far past explicit methods' limit, its
spectral-radius estimate, and gradient flow integrated by it as by Tsit5."""

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow import models, problem, theory
from gflow import observables as obs
from gflow.stabilized import RKC2, _spectral_radius

RATES = jnp.logspace(0, 4, 30)
"""Decay rates of the stiff test equation y' = −Λy + sin t: stiffness ratio 10⁴."""


def _forced(rates, y0=1.0):
    """y' = −Λy + sin t from y(0) = y0 (None: from the smooth solution, no transient), and
    its closed form."""
    particular = lambda s: (rates * np.sin(s) - np.cos(s)) / (rates**2 + 1)
    y0 = particular(0.0) if y0 is None else y0 + 0 * rates

    def field(t, y, args):
        return -rates * y + jnp.sin(t)

    def exact(t):
        return (y0 - particular(0.0)) * np.exp(-rates * t) + particular(t)

    return field, exact, jnp.asarray(y0)


def _solve(field, y0, solver, dt0, controller, ts=(3.0,), max_steps=100_000):
    return diffrax.diffeqsolve(diffrax.ODETerm(field), solver, 0.0, 3.0, dt0, y0, max_steps=max_steps,
                               saveat=diffrax.SaveAt(ts=jnp.asarray(ts)), stepsize_controller=controller)


def test_second_order_at_the_steps_and_between_them():
    """Halving a constant step divides the error by 4 at t = 3 (a step end) and at
    t = 1.234 (cubic Hermite dense output inside a step), on a non-stiff equation."""
    field, exact, y0 = _forced(jnp.linspace(0.5, 2.0, len(RATES)))
    errors = []
    for n in (40, 80, 160):
        sol = _solve(field, y0, RKC2(), 3.0 / n, diffrax.ConstantStepSize(), ts=(1.234, 3.0))
        errors.append([np.max(np.abs(sol.ys[i] - exact(t))) for i, t in enumerate((1.234, 3.0))])
    ratios = np.asarray(errors[:-1]) / np.asarray(errors[1:])
    assert np.all((ratios > 3.6) & (ratios < 4.4)), ratios


def test_stable_at_steps_hundreds_of_times_the_explicit_limit():
    """Constant steps h = 0.05 on rates up to 10⁴ (h·ρ = 500, ~170 times Tsit5's limit),
    from the smooth solution: RKC2 picks enough stages and stays on the closed form to its
    O(h²) error, where Tsit5 at the same step overflows. (From y(0) = 1 the fast transients
    would be damped only slowly at such steps: RKC2 is not L-stable, and the adaptive
    controller takes short steps through a transient.)"""
    field, exact, y0 = _forced(RATES, y0=None)
    ours = _solve(field, y0, RKC2(), 0.05, diffrax.ConstantStepSize())
    assert np.max(np.abs(ours.ys[-1] - exact(3.0))) < 1e-3
    theirs = _solve(field, y0, diffrax.Tsit5(), 0.05, diffrax.ConstantStepSize())
    assert not np.all(np.abs(np.asarray(theirs.ys[-1])) < 1e3)


def test_adaptive_meets_its_tolerance_with_a_fraction_of_the_evaluations():
    """At rtol = atol = 1e-6 on the stiff equation: the error stays within the sum of the
    per-step budgets (the flow contracts, so local errors do not grow; a step's budget is
    atol + rtol·|y| ≤ 2e-6 in the RMS norm over the 30 components, so √30 times that in
    the worst one; observed 4e-5 against the bound's 5e-3), and RKC2 calls the vector
    field (its Jacobian-vector products included) under 1/5 as often as Tsit5 (4,265 and
    65,375 calls, measured)."""
    calls = []
    field, exact, y0 = _forced(RATES)

    def counted(t, y, args):
        jax.debug.callback(lambda: calls.append(1))
        return field(t, y, args)

    evaluations, errors = {}, {}
    for solver in (RKC2(), diffrax.Tsit5()):
        calls.clear()
        sol = _solve(counted, y0, solver, None, diffrax.PIDController(rtol=1e-6, atol=1e-6))
        evaluations[type(solver).__name__] = len(calls)
        errors[type(solver).__name__] = np.max(np.abs(sol.ys[-1] - exact(3.0)))
        if isinstance(solver, RKC2):
            assert errors["RKC2"] < int(sol.stats["num_accepted_steps"]) * 2e-6 * np.sqrt(len(RATES))
    assert evaluations["RKC2"] < evaluations["Tsit5"] / 5, evaluations


@pytest.mark.parametrize("top", [50.0, -50.0])
def test_power_iteration_finds_the_spectral_radius(top):
    """Of a symmetric matrix with eigenvalues {top, ±10, 3, …}: |top| to 1%, whichever
    its sign (a gradient flow's Jacobian −∇²R has both signs at a saddle)."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))
    A = jnp.asarray(q @ np.diag([top, 10, -10, 3, 1, 0.5, 0, -2]) @ q.T)
    v = jnp.ones(8) / np.sqrt(8)
    _, rho = _spectral_radius(lambda u: A @ u, v, jnp.zeros(()), 500)
    assert abs(float(rho) - abs(top)) < 0.01 * abs(top)


def test_gradient_flow_by_rkc2_is_gradient_flow_by_tsit5(paper_problem):
    """The same GF at rtol 1e-10 by both: the end-to-end matrix at every save agrees to
    1e-7 (the accepted errors of a few hundred steps at rtol 1e-10), and every check of
    the RKC2 run (energy identity, monotone risk, …) holds."""
    model = models.mlp(jax.random.key(1), models.mlp_widths(5, 3, 5), 0.5)
    opts = dict(rtol=1e-10, atol=1e-12, t_max=20.0, saves=8, stop_at_excess_risk=0.0)
    names = (*obs.DEFAULT, "end_to_end")
    a = gflow.solve(model, paper_problem, gflow.FlowOptions(**opts), names)
    b = gflow.solve(model, paper_problem, gflow.FlowOptions(solver="rkc2", **opts), names)
    assert a.attrs["status"] == b.attrs["status"] == "reached_t_max"
    np.testing.assert_allclose(b.end_to_end.values, a.end_to_end.values, atol=1e-7)
    checks = theory.check(b, paper_problem)
    assert [c.name for c in checks if c.verdict == "violated"] == []
    assert any(c.name == "energy_identity" and c.verdict == "holds" for c in checks)


def test_a_sweep_gf_point_solves_rkc2_members_one_at_a_time():
    """GELU networks of different stiffness (S from ~30 to ~250 at the end): a sweep's GF
    point gives each RKC2 member exactly what its own `flow.solve` gives (in a batch, every
    member would step with the stiffest one's stages, `sweep.gf.UNBATCHED`), and the
    values agree with Tsit5's to the tolerance (rtol 1e-8; a few thousand steps)."""
    from gflow.sweep import gf

    prob = problem.gaussian(20, 3, seed=0)
    nets = [models.mlp(jax.random.key(s), models.mlp_widths(3, 4, 3), scale, activation="gelu")
            for s, scale in [(0, 0.5), (1, 0.9), (2, 1.2)]]
    options = gflow.FlowOptions(t_max=200.0, saves=2, spacing="linear", solver="rkc2")
    out = gf.gf_point(nets, prob, [options] * 3, ["risk", "sharpness"])
    tsit5 = gf.gf_point(nets, prob, [dataclasses.replace(options, solver="tsit5")] * 3, ["risk", "sharpness"])
    for i, net in enumerate(nets):
        ref = gflow.solve(net, prob, options, ["risk", "sharpness"])
        assert out["status"][i] == ref.attrs["status"] == tsit5["status"][i] == "reached_t_max"
        assert out["risk"][i] == float(ref.risk.values[-1]) and out["sharpness"][i] == float(ref.sharpness.values[-1])
        np.testing.assert_allclose(out["risk"][i], tsit5["risk"][i], rtol=1e-5)
        np.testing.assert_allclose(out["sharpness"][i], tsit5["sharpness"][i], rtol=1e-5)
