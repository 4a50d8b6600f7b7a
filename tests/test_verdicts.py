"""Every verdict can fail: for each check, a violation planted just past its tolerance is
"violated" and one just inside it "holds".

A plant first puts a gross violation at one instance, so that instance decides the check and
the Check reports the bound B and tolerance T in force there; then it puts the quantity at
B ± (1 ± F)·T. Checks of recorded series are planted in the Dataset; checks of the final point
are planted in a `RunContext` (its ε, its bounds, or the Hessian it computed).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest
import xarray as xr

import gflow
from gflow import descent, models, theory
from gflow.solver import ENERGY
from gflow.theory.flow_checks import check_flow, conservation
from tests.conftest import OBSERVABLES, TIGHT, small_scale_mlp

F = 0.01
"""How far past (or inside) the tolerance a plant sits, as a fraction of it."""


def _check(checks, name):
    found = [c for c in checks if c.name == name]
    assert len(found) == 1, f"{name}: {len(found)} checks of that name"
    return found[0]


def _flips(check_of, plant, upper: bool, gross: float, moves: str = "observed"):
    """Assert that the check flips at its tolerance. `plant(x)` sets the planted quantity to x
    and `check_of()` returns the Check; `moves` says whether x is the observed value or the
    bound (a bound moves the other way). Returns the Check at the gross plant."""
    plant(gross)
    c = check_of()
    assert c.verdict == "violated", (c.verdict, c.note)
    B, O, T = c.bound, c.observed, c.tolerance
    assert T >= 0 and math.isfinite(T)
    step = T if T > 0 else 1e-9 * max(abs(B), 1e-300)
    sign = 1.0 if upper else -1.0
    for factor, verdict in ((1 + F, "violated"), (1 - F, "holds")):
        x = B + sign * factor * step if moves == "observed" else O - sign * factor * step
        plant(x)
        c = check_of()
        assert c.verdict == verdict, (factor, c.verdict, c.observed, c.bound, c.tolerance, c.note)
    return c


# --- checks of recorded series ------------------------------------------------------------


@pytest.fixture()
def run(l4_run):
    return l4_run.copy(deep=True)


def _dataset_check(ds, prob, name):
    return lambda: _check(theory.check(ds, prob), name)


def _setter(ds, var, index, transform=lambda x: x):
    def plant(x):
        ds[var].values[index] = transform(x)

    return plant


def test_clean_run_holds_everywhere(l4_run, prob3):
    checks = theory.check(l4_run, prob3)
    assert not [c.name for c in checks if c.verdict not in ("holds",)]


def test_conservation_flips(run, prob3):
    drift = run.balance_drift.values
    i, k = run.sizes["time"] // 2, 1
    _flips(_dataset_check(run, prob3, "conservation"),
           _setter(run, "balance_drift", (i, k), lambda x: drift[i - 1, k] + x), upper=True, gross=1e-2)


def test_monotone_risk_flips(run, prob3):
    e = run.excess_risk.values
    i = run.sizes["time"] // 3
    _flips(_dataset_check(run, prob3, "monotone_risk"),
           _setter(run, "excess_risk", i, lambda x: e[i - 1] + x), upper=True, gross=1e-3)


def test_energy_identity_flips(run, prob3):
    e = run.excess_risk.values
    i = 2 * run.sizes["time"] // 3
    _flips(_dataset_check(run, prob3, "energy_identity"),
           _setter(run, ENERGY, i, lambda x: (e[0] - e[i]) + x), upper=True, gross=1e-2)


def test_pl_pointwise_flips(run, prob3):
    _flips(_dataset_check(run, prob3, "pl_pointwise"), _setter(run, "pl_ratio", run.sizes["time"] // 2), upper=False,
           gross=-1.0)


def test_final_weights_consistent_flips(run, prob3):
    recomputed = float(prob3.excess_risk(gflow.end_to_end(gflow.trajectory.model_from(run))))
    # the tolerance is relative to the values compared: plant gross errors of the same order
    _flips(_dataset_check(run, prob3, "final_weights_consistent"),
           _setter(run, "excess_risk", -1, lambda x: recomputed + x), upper=True, gross=1e-4 * recomputed)


def test_lemma_rank_one_flips(run, prob3):
    _flips(_dataset_check(run, prob3, "lemma_rank_one"), _setter(run, "rank_one_gap", (run.sizes["time"] // 2, 2)),
           upper=True, gross=1.0)


def test_lemma_balanced_norms_flips(run, prob3):
    sv = run.singular_values.values
    i = run.sizes["time"] // 2
    base = sv[i, 1:] ** 2

    def plant(x):  # the spread max σ² − min σ² at save i becomes x
        sv[i, 1:] = np.sqrt(base.min())
        sv[i, 0] = np.sqrt(base.min() + x)

    _flips(_dataset_check(run, prob3, "lemma_balanced_norms"), plant, upper=True, gross=1.0)


def test_lemma_alignment_flips(run, prob3):
    i = run.sizes["time"] - 1  # late: σ_{k+1}² > ε, so the bound 1 − ε/σ² is informative
    _flips(_dataset_check(run, prob3, "lemma_alignment"), _setter(run, "alignment", (i, 1)),
           upper=False, gross=-1.0)


def test_a_rank_one_gap_of_two_epsilon_is_caught(run, prob3):
    """The issue's planted violation: a rank-one gap of 2ε in the corollary's regime."""
    eps = theory.epsilon(gflow.trajectory.model_from(run, "initial"))
    run["rank_one_gap"].values[50, 0] = 2 * eps
    c = _check(theory.check(run, prob3), "lemma_rank_one")
    assert c.verdict == "violated" and c.tolerance < 1e-3 * eps


def test_assumption_a2_flips(run, prob3):
    err = float(run.attrs["a2_risk_minus_y_sq_error"])
    for x, verdict in ((-(1 + F) * err, "holds"), (-(1 - F) * err, "assumption not met"), (1e-3, "assumption not met")):
        run.attrs["a2_risk_minus_y_sq"] = x
        assert _check(theory.check(run, prob3), "assumption_a2").verdict == verdict


def test_corollary_converges_by_status(run, prob3):
    for status, verdict in (("converged", "holds"), ("non_finite", "violated"), ("max_steps", "trend only")):
        run.attrs["status"] = status
        assert _check(theory.check(run, prob3), "corollary_converges").verdict == verdict


# --- checks of the final point, planted in the context --------------------------------------


@pytest.fixture()
def ctx(l4_run, prob3):
    c = theory.RunContext.from_dataset(l4_run, prob3)
    assert c.curvature is not None  # computed once, then overridden below
    return dataclasses.replace(c, bounds=dict(c.bounds))


def _context_check(ctx, name):
    return lambda: _check(check_flow(ctx), name)


def _override(ctx, attr, transform):
    def plant(x):
        ctx.__dict__[attr] = transform(x)

    return plant


def _curvature(ctx, field, transform=lambda x: x):
    base = ctx.curvature
    return _override(ctx, "curvature", lambda x: base._replace(**{field: transform(x)}))


def test_corollary_rank_one_flips(ctx):
    _flips(_context_check(ctx, "corollary_rank_one"), _override(ctx, "epsilon", lambda x: x), upper=True,
           gross=1e-12, moves="bound")


def test_corollary_alignment_flips(ctx):
    """The alignment of interface 1 at W_final is planted by turning the top right singular
    vector of W_2 away from the top left one of W_1 (in the SVD the check reads)."""
    svds = [tuple(np.array(m) for m in svd) for svd in ctx.final_svd]
    u = svds[0][0][:, 0]
    other = np.linalg.svd(np.eye(u.size) - np.outer(u, u))[0][:, 0]  # a unit vector ⟂ u

    def plant(x):
        x = min(max(x, 0.0), 1.0)
        U, s, Vt = (m.copy() for m in svds[1])
        Vt[0] = math.sqrt(x) * u + math.sqrt(1 - x) * other
        ctx.__dict__["final_svd"] = [svds[0], (U, s, Vt), *svds[2:]]

    _flips(_context_check(ctx, "corollary_alignment"), plant, upper=False, gross=0.0)


def test_corollary_low_norm_flips(ctx):
    def plant(x):
        ctx.bounds["sigma_high"] = x

    _flips(_context_check(ctx, "corollary_low_norm"), plant, upper=True, gross=0.5, moves="bound")


def test_corollary_sharpness_flips(ctx):
    _flips(_context_check(ctx, "corollary_sharpness"), _curvature(ctx, "sharpness"), upper=True, gross=1e6)


def test_sharpness_lower_bound_flips(ctx):
    _flips(_context_check(ctx, "sharpness_lower_bound"), _curvature(ctx, "sharpness"), upper=False, gross=1e-3)


def test_sharpness_norm_bound_flips(ctx):
    _flips(_context_check(ctx, "sharpness_norm_bound"), _curvature(ctx, "sharpness"), upper=False, gross=1e-3)


def test_hessian_psd_flips(ctx):
    _flips(_context_check(ctx, "hessian_psd_at_minimizer"), _curvature(ctx, "min_eigenvalue"), upper=False,
           gross=-1.0)


def test_sharpness_gauss_newton_flips(ctx):
    gn = ctx.curvature.gauss_newton_top
    _flips(_context_check(ctx, "sharpness_gauss_newton"), _curvature(ctx, "sharpness", lambda x: gn + x),
           upper=True, gross=1.0)


def test_balanced_between_bounds_flips(ctx):
    def plant(x):
        ctx.bounds["S_balanced"] = x

    _flips(_context_check(ctx, "balanced_between_bounds"), plant, upper=False, gross=0.5 * ctx.bounds["S_lower"])


def test_conservation_final_weights_flips(ctx):
    """The stored end point is planted through its weights: one entry of W_final moved until
    the drift of D_k crosses the whole run's budget."""
    base = ctx.final.layers()

    def plant(x):  # W_1 ↦ W_1(1 + x): the drift of D_1 grows linearly in x
        moved = models.from_layers([base[0] * (1 + x)] + base[1:])
        ctx.__dict__["final"] = moved

    def judged():  # only this check: the bisection below calls it a hundred times
        return conservation(ctx)[-1]

    plant(1e-2)
    gross = judged()
    assert gross.verdict == "violated"
    # drift(x) is smooth in x; find x with drift = (1 ± F)·T by bisection
    T = gross.tolerance

    def drift_at(x):
        plant(x)
        return judged().observed

    for factor, verdict in ((1 + F, "violated"), (1 - F, "holds")):
        lo, hi = 0.0, 1e-2
        for _ in range(80):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if drift_at(mid) < factor * T else (lo, mid)
        plant(hi if factor > 1 else lo)
        assert judged().verdict == verdict


# --- residual networks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def residual_run(prob3):
    model = models.residual(jax.random.key(3), 3, 5, 0.5)
    opts = gflow.FlowOptions(rtol=1e-9, atol=1e-12, t_max=1e4, saves=40, stop_at_excess_risk=1e-13)
    return gflow.solve(model, prob3, opts, observables=OBSERVABLES)


@pytest.mark.parametrize("name, upper", [("residual_products_upper_init", True), ("residual_products_lower_init", False)])
def test_residual_product_bounds_flip(residual_run, prob3, name, upper):
    """Scaling W(0) by c scales P_k by c^k: bisect on c for the scaling that puts the
    product's extreme singular value on the bound, then step just past and just inside."""
    ds = residual_run.copy(deep=True)
    base = ds.weights_initial.values.copy()
    ds.attrs["init_scale"] = theory.residual_scale(gflow.trajectory.model_from(ds, "initial"))

    def at(c):
        ds["weights_initial"].values[:] = c * base
        return _check(theory.check(ds, prob3), name)

    assert at(1.0).verdict == "holds"
    lo, hi = (1.0, 4.0) if upper else (0.1, 1.0)  # the crossing lies between
    assert at(hi if upper else lo).verdict == "violated"
    for _ in range(60):
        mid = (lo + hi) / 2
        inside = at(mid).verdict == "holds"
        lo, hi = (mid, hi) if inside == upper else (lo, mid)
    assert at(lo if upper else hi).verdict == "holds"
    assert at(hi if upper else lo).verdict == "violated"
    assert hi / lo - 1 < 1e-12


def test_residual_statements_beyond_the_radius_are_trends(residual_run, prob3):
    checks = {c.name: c for c in theory.check(residual_run, prob3)}
    for name in ("residual_products_final", "residual_theta", "residual_sharpness_ratio"):
        assert checks[name].verdict == "trend only"
    for name in ("lemma_rank_one", "corollary_converges", "assumption_a2"):
        assert checks.get(name) is None or checks[name].verdict == "not applicable"


def test_no_false_violation_at_a_large_residual_scale():
    """The issue's case, scaled down: s = 3 gives σ_min(P_k) far below the slides' bound
    exp(−2s²/d − u)/4 but above the corrected exp(−2s² − u)/4."""
    s, d, L = 3.0, 20, 8
    model = models.residual(jax.random.key(0), d, L, s)
    sigma_min = theory.partial_product_extremes(model)[:, 1].min()
    pb = theory.partial_product_bounds(s, d)
    assert sigma_min >= pb["lower"]
    assert sigma_min < math.exp(-2 * s**2 / d - pb["u"]) / 4  # the slides' exponent would fail here


# --- vacuous and empty statements -------------------------------------------------------------


def test_vacuous_lemma_is_not_reported_as_holding(prob3):
    """At a large scale ε exceeds every possible rank-one gap and the alignment bound is ≤ 0:
    the Lemma says nothing, and the verdict says so."""
    model = models.mlp(jax.random.key(3), models.mlp_widths(3, 4, 3), 0.8)
    ds = gflow.solve(model, prob3, gflow.FlowOptions(t_max=1e3, saves=30), observables=OBSERVABLES)
    checks = {c.name: c for c in theory.check(ds, prob3)}
    for name in ("lemma_rank_one", "lemma_alignment"):
        assert checks[name].verdict == "not applicable" and "vacuous" in checks[name].note


def test_an_empty_set_never_holds():
    c = theory.verdict.judge_worst("x", "s", "src", np.zeros((0, 3)), 0.0, 1.0, upper=True)
    assert c.verdict == "not applicable"
    c = theory.verdict.judge_worst("x", "s", "src", [0.5, np.nan], 1.0, 0.0, upper=True)
    assert c.verdict == "violated"


# --- gradient descent ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gd_run(prob3):
    nets = [models.mlp(jax.random.key(s), models.mlp_widths(3, 4, 3), 0.5) for s in range(2)]
    return descent.run(nets, prob3, [0.01, 0.1, 0.4], 600, observables=("excess_risk", "balance_drift"))


def test_gd_conservation_identity_holds_to_round_off(gd_run):
    c = _check(theory.check(gd_run), "gd_conservation")
    assert c.verdict == "holds"
    assert float(np.nanmax(gd_run.balance_residual.values)) < 1e-12 < float(np.nanmax(gd_run.balance_drift.values))


def test_gd_conservation_flips(gd_run):
    ds = gd_run.copy(deep=True)
    _flips(lambda: _check(theory.check(ds), "gd_conservation"), _setter(ds, "balance_residual", (1, 0, 3, 1)),
           upper=True, gross=1e-3)


def _gd_summary(prob, depth, eta, S, status):
    ds = xr.Dataset(dict(step_size=("run", np.asarray(eta, float)), final_sharpness=("run", np.asarray(S, float)),
                         status=("run", np.asarray(status))))
    ds.attrs = dict(prob.constants(), depth=depth, kind="mlp", method="gradient_descent")
    return ds


def test_gd_stability_and_lower_bound_flip(prob3):
    b = theory.bounds(prob3, 4)
    eta = 0.5 * b["eta_crit"]
    S = np.array([1.2 * b["S_lower"]])
    ds = _gd_summary(prob3, 4, [eta], S, ["converged"])

    def planter(x):
        ds["final_sharpness"].values[0] = x

    _flips(lambda: _check(theory.check(ds), "gd_stability"), planter, upper=True, gross=10 / eta)
    _flips(lambda: _check(theory.check(ds), "sharpness_lower_bound"), planter, upper=False, gross=0.0)


def test_gd_fails_above_eta_crit_flips(prob3):
    e = theory.bounds(prob3, 4)["eta_crit"]
    for eta, verdict in ((e * (1 + 1e-9), "violated"), (e * (1 - 1e-9), "holds")):
        ds = _gd_summary(prob3, 4, [eta], [1.0], ["converged"])
        assert _check(theory.check(ds), "gd_fails_above_eta_crit").verdict == verdict
