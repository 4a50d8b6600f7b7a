import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from scipy.optimize import minimize

import gflow
from gflow import linalg, models, observables as obs, problem, theory

from tests.conftest import OBSERVABLES, TIGHT, small_scale_mlp as _small_scale_mlp


@pytest.fixture(scope="module", params=[(3, 1e-3), (4, 5e-4)], ids=["L3", "L4"])
def corollary_run(request, prob3):
    """GF from a small-scale init with 32L√ε ≤ 1: the corollary's regime."""
    depth, scale = request.param
    model = _small_scale_mlp(prob3, depth, scale)
    assert theory.smallness(theory.epsilon(model), depth) <= 1.0
    ds = gflow.solve(model, prob3, gflow.FlowOptions(**TIGHT), observables=OBSERVABLES)
    assert ds.attrs["status"] == "converged"
    return ds


def _by_name(checks):
    return {c.name: c for c in checks}


# --- closed forms against direct computations -------------------------------------------


def _dense_sharpness(model, prob):
    f, x = obs.flat_risk(model, prob)
    return float(np.linalg.eigvalsh(np.asarray(linalg.dense_hessian(f, x)))[-1])


@pytest.mark.parametrize("depth", [2, 3, 6])
def test_balanced_minimizer_lies_between_the_bounds(prob3, depth):
    model = theory.balanced_minimizer(prob3, models.mlp_widths(3, depth, 3), key=jax.random.key(depth))
    assert float(prob3.excess_risk(gflow.end_to_end(model))) < 1e-28
    S = _dense_sharpness(model, prob3)
    b = theory.bounds(prob3, depth)
    # the closed form 2c·λ_max(Σ̂ + (L−1)ssᵀ) against the dense Hessian
    assert b["S_balanced"] == pytest.approx(S, rel=1e-10)
    assert b["S_lower"] <= S <= b["S_upper"]
    assert b["S_lower"] == pytest.approx(2 * depth * float(prob3.a))  # ‖π*‖ = 1, p = 1
    assert b["eta_crit"] == pytest.approx(1 / (depth * float(prob3.a)))


def test_bounds_scale_with_pi_star_and_p():
    """c = ‖π*‖^{2−2/L}‖p‖^{2/L}: a residual-shaped balanced minimizer with ‖p‖ = 2 and
    ‖π*‖ ≠ 1, compared with its dense Hessian."""
    prob = problem.gaussian(25, 3, seed=4, unit_pi_star=False)
    depth = 3
    p = 2.0 * np.array([0.6, 0.0, 0.8])
    model = theory.balanced_minimizer(prob, (3, 3, 3, 3), p=p)
    assert isinstance(model, gflow.Residual)
    S = _dense_sharpness(model, prob)
    b = theory.bounds(prob, depth, p_norm=2.0)
    norm = float(np.linalg.norm(prob.pi_star))
    assert abs(norm - 1) > 0.1
    assert b["c"] == pytest.approx(norm ** (4 / 3) * 2.0 ** (2 / 3))
    assert b["S_balanced"] == pytest.approx(S, rel=1e-10)
    assert b["S_lower"] <= S <= b["S_upper"]


def _minimizer_family(prob, widths):
    """θ ↦ a global minimizer: W_2..W_L free, W_1 = bπ*ᵀ/‖b‖² + (I − bbᵀ/‖b‖²)Z with
    b = W_Lᵀ⋯W_2ᵀ·1, so W_1ᵀb = π* exactly. Returns (θ ↦ S, dim θ, θ ↦ layers)."""
    L = len(widths) - 1
    shapes = [(widths[k + 1], widths[k]) for k in range(L)]
    sizes = [r * c for r, c in shapes]
    pi = prob.pi_star

    def layers_of(theta):
        out, i = [], 0
        for (r, c), n in zip(shapes[1:], sizes[1:]):
            out.append(theta[i : i + n].reshape(r, c))
            i += n
        Z = theta[i:].reshape(shapes[0])
        b = jnp.ones(1)
        for W in reversed(out):
            b = W.T @ b
        P = jnp.eye(b.shape[0]) - jnp.outer(b, b) / (b @ b)
        return [jnp.outer(b, pi) / (b @ b) + P @ Z] + out

    def risk_flat(x):
        v, i, Ws = jnp.ones(1), 0, []
        for (r, c), n in zip(shapes, sizes):
            Ws.append(x[i : i + n].reshape(r, c))
            i += n
        for W in reversed(Ws):
            v = W.T @ v
        return prob.risk(v)

    @jax.jit
    def S_of(theta):
        x = jnp.concatenate([W.ravel() for W in layers_of(theta)])
        return jnp.linalg.eigvalsh(jax.hessian(risk_flat)(x))[-1]

    return S_of, sum(sizes), layers_of


@pytest.mark.parametrize("widths", [(2, 2, 1), (2, 2, 2, 1)])
def test_smallest_sharpness_over_minimizers_is_bracketed(widths):
    """Minimize S over the minimizers (Nelder–Mead from six random starts): the smallest
    value found lies in [S_lower, S_upper]. Every start reaches the same value to 1e-9, so
    it is taken as S_min."""
    prob = problem.gaussian(20, 2, seed=3)
    S_of, n, _ = _minimizer_family(prob, widths)
    rng = np.random.default_rng(0)
    found = []
    for _ in range(6):
        r = minimize(lambda th: float(S_of(jnp.asarray(th))), rng.standard_normal(n), method="Nelder-Mead",
                     options=dict(maxiter=4000, xatol=1e-10, fatol=1e-12))
        found.append(r.fun)
    S_min = min(found)
    assert max(found) - S_min < 1e-9 * S_min
    b = theory.bounds(prob, len(widths) - 1)
    assert b["S_lower"] <= S_min <= b["S_upper"]
    assert S_min <= b["S_balanced"] * (1 + 1e-12)  # the balanced one is a minimizer too


def test_epsilon_against_a_direct_computation():
    rng = np.random.default_rng(5)
    layers = [rng.standard_normal((4, 3)), rng.standard_normal((2, 4)), rng.standard_normal((1, 2))]
    top = max(np.trace(w.T @ w) for w in layers)
    gaps = 0.0
    for k in range(2):
        D = layers[k] @ layers[k].T - layers[k + 1].T @ layers[k + 1]
        gaps += np.max(np.abs(np.linalg.eigvalsh(D)))  # spectral norm of a symmetric matrix
    expected = 3 * top + 2 * gaps
    assert theory.epsilon(models.from_layers(layers)) == pytest.approx(expected, rel=1e-13)
    assert theory.epsilon(layers) == pytest.approx(expected, rel=1e-13)
    assert theory.smallness(expected, 3) == pytest.approx(96 * math.sqrt(expected))


def test_rescaled_minimizers_keep_the_lower_bound_and_grow_sharper(prob3):
    """(C W_1, W_2/C, W_3, …) is still a minimizer; S ≥ S_lower for every C and S → ∞."""
    depth = 4
    base = theory.balanced_minimizer(prob3, models.mlp_widths(3, depth, 3), key=jax.random.key(1))
    b = theory.bounds(prob3, depth)
    sharp = []
    for C in (1.0, 2.0, 4.0, 8.0, 16.0):
        layers = base.layers()
        model = models.from_layers([C * layers[0], layers[1] / C] + layers[2:])
        assert float(prob3.excess_risk(gflow.end_to_end(model))) < 1e-26
        S = theory.sharpness(model, prob3)
        assert S == pytest.approx(_dense_sharpness(model, prob3), rel=1e-12)
        assert S >= b["S_lower"]
        assert S >= theory.norm_sharpness_bound(model.layers(), prob3) * (1 - 1e-12)
        assert S >= theory.slides_norm_sharpness_bound(model.layers(), prob3)
        sharp.append(S)
    assert np.all(np.diff(sharp) > 0)
    assert sharp[-1] / sharp[-2] > 3.5  # the W_2 block grows like C²
    # at C = 1 the derived norm bound is exactly S_lower
    assert theory.norm_sharpness_bound(base.layers(), prob3) == pytest.approx(b["S_lower"], rel=1e-12)


def test_norm_bound_holds_at_random_minimizers():
    prob = problem.gaussian(20, 2, seed=3)
    S_of, n, layers_of = _minimizer_family(prob, (2, 3, 2, 1))
    rng = np.random.default_rng(7)
    for _ in range(10):
        theta = jnp.asarray(rng.standard_normal(n) * rng.uniform(0.3, 2.0))
        layers = [np.asarray(w) for w in layers_of(theta)]
        model = models.from_layers(layers)
        assert float(prob.excess_risk(gflow.end_to_end(model))) < 1e-24
        S = float(S_of(theta))
        assert S == pytest.approx(theory.sharpness(model, prob), rel=1e-10)
        assert S >= theory.norm_sharpness_bound(layers, prob) * (1 - 1e-12)
        assert S >= theory.bounds(prob, 3)["S_lower"]


def test_bounds_from_attrs_match_the_problem(corollary_run, prob3):
    ds = corollary_run
    from_attrs = theory.bounds_from_attrs(ds.attrs)
    direct = theory.bounds(prob3, ds.attrs["depth"])
    for k in ("S_lower", "S_upper", "eta_crit", "S_corollary_upper", "sigma_low", "sigma_high"):
        assert from_attrs[k] == pytest.approx(direct[k], rel=1e-14)
    assert theory.bounds_from_dataset(ds)["S_lower"] == pytest.approx(direct["S_lower"], rel=1e-14)


def test_partial_product_observable_against_numpy():
    model = models.residual(jax.random.key(2), 3, 5, 0.7)
    prob = problem.gaussian(20, 3, seed=0)
    got = np.asarray(obs.REGISTRY["partial_product_extremes"](model, prob, model))
    P, ref = np.eye(3), []
    for w in model.layers():
        P = np.asarray(w) @ P
        s = np.linalg.svd(P, compute_uv=False)
        ref.append((s.max(), s.min()))
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_allclose(theory.partial_product_extremes(model), ref, rtol=1e-12)
    # θ_k = L(W_k(∞) − W_k(0)): moving one layer by Δ gives L‖Δ‖
    layers = model.layers()
    moved = models.from_layers([layers[0] + 0.01 * np.eye(3)] + layers[1:], model.p, "residual")
    np.testing.assert_allclose(theory.residual_theta(model, moved), [5 * 0.01 * math.sqrt(3), 0, 0, 0, 0], atol=1e-14)


# --- checks on real runs -----------------------------------------------------------------


@pytest.mark.parametrize("with_problem", [True, False])
def test_every_check_holds_in_the_corollary_regime(corollary_run, prob3, with_problem):
    checks = theory.check(corollary_run, prob3 if with_problem else None)
    names = {c.name for c in checks}
    expected = {
        "conservation", "conservation_final_weights", "final_weights_consistent", "monotone_risk",
        "energy_identity", "pl_pointwise", "assumption_a2", "lemma_rank_one", "lemma_balanced_norms",
        "lemma_alignment", "corollary_converges", "corollary_rank_one", "corollary_low_norm",
        "corollary_alignment", "corollary_sharpness", "sharpness_lower_bound", "sharpness_norm_bound",
        "balanced_between_bounds", "hessian_psd_at_minimizer", "sharpness_gauss_newton",
    }
    assert expected <= names
    need_data = {"hessian_psd_at_minimizer", "sharpness_gauss_newton"}
    bad = [(c.name, c.verdict, c.note) for c in checks if c.verdict != "holds"]
    if with_problem:
        assert not bad
    else:  # the Hessian checks need Σ̂ and π*, which attrs do not hold
        assert {b[0] for b in bad} == need_data and all(b[1] == "assumption not met" for b in bad)
    for c in checks:
        if c.margin is not None:
            assert c.margin >= 0
    assert theory.exit_code(checks) == 0
    by = _by_name(checks)
    # the measured margins are far from the tolerances where it matters
    assert by["conservation"].observed < 1e-3 * by["conservation"].tolerance
    ratio = by["sharpness_lower_bound"].observed / by["sharpness_lower_bound"].bound
    assert 1.0 < ratio < 4 * float(prob3.Lam / prob3.lam)


def test_run_outside_the_corollary_regime_reports_unmet_assumptions(prob3, l4_run):
    """Scale 0.3 at the same shape: 32L√ε ≫ 1, so the corollary is reported, not judged;
    the classical checks still hold and the energy identity covers every save."""
    model = models.mlp(jax.random.key(3), models.mlp_widths(3, 4, 3), 0.3)
    ds = gflow.solve(model, prob3, gflow.FlowOptions(**TIGHT), observables=OBSERVABLES)
    checks = _by_name(theory.check(ds, prob3))
    assert theory.smallness(theory.epsilon(model), 4) > 1
    assert checks["corollary_sharpness"].verdict == "assumption not met"
    assert checks["corollary_low_norm"].verdict == "assumption not met"
    for name in ("conservation", "monotone_risk", "pl_pointwise", "energy_identity", "sharpness_lower_bound"):
        assert checks[name].verdict == "holds", (name, checks[name].note)
    assert "covering the whole risk drop" in checks["energy_identity"].note


@pytest.mark.slow
def test_residual_run_checks(prob3):
    model = models.residual(jax.random.key(3), 3, 5, 0.5)
    opts = gflow.FlowOptions(rtol=1e-9, atol=1e-12, t_max=1e4, saves=60, stop_at_excess_risk=1e-13)
    ds = gflow.solve(model, prob3, opts, observables=OBSERVABLES + ("partial_product_extremes",))
    assert ds.attrs["status"] == "converged"
    checks = _by_name(theory.check(ds, prob3))
    assert not [c.name for c in checks.values() if c.verdict == "violated"]
    for name in ("conservation", "sharpness_lower_bound", "residual_products_upper_init", "residual_products_lower_init"):
        assert checks[name].verdict == "holds"
    assert checks["lemma_rank_one"].verdict == "not applicable"  # not an MLP with p = 1
    assert checks["residual_products_final"].verdict == "trend only"
    assert checks["residual_theta"].verdict == "trend only"
    assert checks["residual_theta"].observed == pytest.approx(
        theory.residual_theta(gflow.trajectory.model_from(ds, "initial"), gflow.trajectory.model_from(ds)).max())


# --- tampering is caught ------------------------------------------------------------------


def _violated(ds, prob=None):
    return {c.name for c in theory.check(ds, prob) if c.verdict == "violated"}


def test_a_layer_rescaled_mid_run_is_caught(l4_run, prob3):
    ds = l4_run.copy(deep=True)
    mid = ds.sizes["time"] // 2
    ds["singular_values"][mid:, 0] *= 1.5
    assert "lemma_balanced_norms" in _violated(ds, prob3)


def test_a_perturbed_final_weight_is_caught(l4_run, prob3):
    ds = l4_run.copy(deep=True)
    ds["weights_final"][0, 0, 0] += 1e-3
    for prob in (prob3, None):
        bad = _violated(ds, prob)
        assert {"conservation_final_weights", "final_weights_consistent"} <= bad
    assert theory.exit_code(theory.check(ds)) == 1


def test_edited_balance_drift_is_caught(l4_run):
    ds = l4_run.copy(deep=True)
    ds["balance_drift"][5, 1] = 1e-3
    assert _violated(ds) == {"conservation"}


def test_edited_risk_and_alignment_are_caught(l4_run):
    ds = l4_run.copy(deep=True)
    j = ds.sizes["time"] // 3
    ds["excess_risk"][j] += 1e-6
    ds["alignment"][-1, 0] = 0.9
    bad = _violated(ds)
    assert {"monotone_risk", "lemma_alignment"} <= bad


def test_unmodified_copy_is_clean(l4_run):
    assert not _violated(l4_run.copy(deep=True))


# --- gradient descent ---------------------------------------------------------------------


def _gd_dataset(prob, depth, eta, S, status):
    ds = xr.Dataset(
        dict(step_size=("run", np.asarray(eta, float)), final_sharpness=("run", np.asarray(S, float)),
             status=("run", np.asarray(status))),
    )
    ds.attrs = dict(prob.constants(), depth=depth, kind="mlp", method="gradient_descent")
    return ds


def test_gradient_descent_checks(prob3):
    b = theory.bounds(prob3, 4)
    e = b["eta_crit"]
    eta = [0.2 * e, 0.5 * e, 2 * e]
    S = [1.2 * b["S_lower"], 1.1 * b["S_lower"], np.nan]
    good = _by_name(theory.check(_gd_dataset(prob3, 4, eta, S, ["converged", "converged", "diverged"])))
    assert good["gd_stability"].verdict == "holds"
    assert good["gd_fails_above_eta_crit"].verdict == "holds"
    assert good["sharpness_lower_bound"].verdict == "holds"
    # a run that converges above η_crit, and one that sits at S > 2/η
    bad = _by_name(theory.check(_gd_dataset(prob3, 4, eta, [1.2 * b["S_lower"], 2.5 / eta[1], 0.9 * b["S_lower"]],
                                            ["converged", "converged", "converged"])))
    assert bad["gd_fails_above_eta_crit"].verdict == "violated"
    assert bad["gd_stability"].verdict == "violated"
    assert bad["sharpness_lower_bound"].verdict == "violated"


# --- reports ------------------------------------------------------------------------------


def test_reports_are_written_and_read_back(l4_run, tmp_path):
    checks = theory.check(l4_run)
    theory.write_report(checks, tmp_path / "run")
    files = sorted(os.listdir(tmp_path / "run"))
    assert files == ["checks.json", "checks.md"]  # no temporary files left behind
    payload = json.loads((tmp_path / "run" / "checks.json").read_text())
    assert payload["exit_code"] == 0 and len(payload["checks"]) == len(checks)
    back = theory.read_report(tmp_path / "run")
    assert [c.name for c in back] == [c.name for c in checks]
    assert [c.verdict for c in back] == [c.verdict for c in checks]
    md = (tmp_path / "run" / "checks.md").read_text()
    assert md.count("\n| ") == len(checks) + 2  # header, rule, one row per check
    table = theory.format_table(checks)
    assert all(c.name in table for c in checks) and "0 violated" in table


def test_checks_survive_a_netcdf_round_trip(l4_run, prob3, tmp_path):
    gflow.save(l4_run, tmp_path / "trajectory.nc")
    loaded = gflow.load(tmp_path / "trajectory.nc")
    a, b = theory.check(l4_run, prob3), theory.check(loaded, prob3)
    assert [(c.name, c.verdict) for c in a] == [(c.name, c.verdict) for c in b]
    np.testing.assert_allclose([c.margin or 0.0 for c in a], [c.margin or 0.0 for c in b], rtol=1e-12)


def test_corollary_scale_hits_its_target():
    unit = models.mlp(jax.random.key(0), models.mlp_widths(5, 10, 5), 1.0)
    s = theory.corollary_scale(unit, 0.95)
    scaled = models.mlp(jax.random.key(0), models.mlp_widths(5, 10, 5), s)
    assert theory.smallness(theory.epsilon(scaled), 10) == pytest.approx(0.95, rel=1e-10)


def test_the_excess_risk_tolerance_covers_the_round_off_of_w(paper_problem):
    """Near the minimizer the excess risk E = (w − π*)ᵀΣ̂(w − π*) moves by 2(w − π*)ᵀΣ̂Δw under
    a change Δw of w's last bits, as two evaluations of w = pᵀW_L⋯W_1 in different orders
    give: `excess_risk_tolerance` with `w_error` ≥ ‖Δw‖ covers it, and without it does not."""
    from gflow.theory import tolerances

    pi = np.asarray(paper_problem.pi_star)
    rng = np.random.default_rng(0)
    w = pi + 1e-10 * rng.standard_normal(pi.size)
    dw = 4 * np.finfo(float).eps * np.linalg.norm(w) * rng.standard_normal(pi.size) / np.sqrt(pi.size)
    E0, E1 = (float(paper_problem.excess_risk(jnp.asarray(v))) for v in (w, w + dw))
    assert 1e-21 < E0 < 1e-18
    Lam, pi2 = float(paper_problem.Lam), float(pi @ pi)
    bound = tolerances.product_roundoff((5,) * 11, float(np.linalg.norm(w)))  # L = 10, width 5
    assert bound >= np.linalg.norm(dw)
    assert abs(E1 - E0) <= tolerances.excess_risk_tolerance(E0, E1, Lam, pi2, bound)
    assert abs(E1 - E0) > tolerances.excess_risk_tolerance(E0, E1, Lam, pi2)
