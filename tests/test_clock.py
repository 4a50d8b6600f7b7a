"""The reparametrized ("arclength") clock of gflow.flow: GF in the corollary's regime.

32L√ε ≤ 1 (theory.md §4) puts the escape from the plateau near t ≈ 1e27 (L = 10) to
t ≈ 1e165 (L = 40), far beyond what a plain float64 clock resolves. The checks are held
against independent computations: ε, the conservation law and the corollary's bounds from
the stored weights with NumPy, the sharpness from a dense Hessian, and the plain-time
solver where it works.
"""

import collections
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow import clock, flow, linalg, models, observables as obs, problem

RECORD = ("excess_risk", "balance_drift", "grad_norm_sq", "pl_ratio", "pl_lower_bound")


def epsilon(layers):
    """ε = 3 max‖W_k‖_F² + 2 Σ ‖W_kW_kᵀ − W_{k+1}ᵀW_{k+1}‖_2 (theory.md §4), in NumPy."""
    eps = 3 * max(np.sum(w**2) for w in layers)
    return eps + 2 * sum(np.linalg.norm(a @ a.T - b.T @ b, 2) for a, b in zip(layers[:-1], layers[1:]))


def corollary_init(depth, margin=0.95):
    """Widths 5, d = 5, entries N(0, s²) with s chosen so that 32L√ε = margin (ε ∝ s²)."""
    key, widths = jax.random.key(0), models.mlp_widths(5, depth, 5)
    unit = epsilon([np.asarray(w) for w in models.mlp(key, widths, 1.0).layers()])
    return models.mlp(key, widths, margin / (32 * depth * math.sqrt(unit)))


def layers_of(ds, which):
    return [np.asarray(w) for w in gflow.trajectory.model_from(ds, which).layers()]


@pytest.fixture(scope="module")
def prob():
    return problem.gaussian(50, 5, seed=0)


@pytest.fixture(scope="module", params=[10, 20, 40])
def corollary_run(request, prob):
    depth = request.param
    model = corollary_init(depth)
    opts = gflow.FlowOptions(t_max=1e300, saves=60, stop_at_excess_risk=1e-12)
    ds = gflow.solve(model, prob, opts, RECORD)
    return depth, model, ds


def test_initialization_is_in_the_corollary_regime(corollary_run):
    depth, model, _ = corollary_run
    eps = epsilon([np.asarray(w) for w in model.layers()])
    assert 32 * depth * math.sqrt(eps) <= 1.0


def test_auto_clock_crosses_the_plateau_and_converges(corollary_run):
    depth, _, ds = corollary_run
    a = ds.attrs
    assert a["clock"] == "arclength" and a["flow_clock"] == "auto"
    assert a["status"] == "converged"
    assert float(ds.excess_risk[-1]) <= 1e-10
    # the escape lies where the plain clock cannot go (theory.md §4: 1e27 at L = 10, more deeper)
    assert a["t_switch"] > 1e25 and a["t_final"] == pytest.approx(a["t_switch"], rel=1e-12)
    assert a["num_steps"] == a["num_steps_arclength"] + a["num_steps_plain"] < 1000
    print(f"L={depth}: t_switch={a['t_switch']:.3g}, steps {a['num_steps_arclength']}+{a['num_steps_plain']}")


def test_conserved_quantities_drift_below_solver_tolerance(corollary_run):
    # rtol 1e-8, atol 1e-10 over a few hundred steps; after the escape the weights are O(1),
    # so an absolute drift of 1e-8 is a relative one too.
    _, _, ds = corollary_run
    assert float(ds.balance_drift.max()) <= 1e-8
    W0, W1 = layers_of(ds, "initial"), layers_of(ds, "final")
    for k in range(len(W0) - 1):
        d0 = W0[k + 1].T @ W0[k + 1] - W0[k] @ W0[k].T
        d1 = W1[k + 1].T @ W1[k + 1] - W1[k] @ W1[k].T
        assert np.linalg.norm(d1 - d0) <= 1e-8


def test_corollary_bounds_hold_at_the_limit(corollary_run, prob):
    depth, model, ds = corollary_run
    eps = epsilon([np.asarray(w) for w in model.layers()])
    norm = float(np.linalg.norm(prob.pi_star))
    svds = [np.linalg.svd(w) for w in layers_of(ds, "final")]
    s = np.array([sv[1][0] for sv in svds])
    assert np.all(np.array([np.sum(sv[1][1:] ** 2) for sv in svds]) <= eps)  # rank one
    assert np.all((norm / 2) ** (1 / depth) <= s) and np.all(s <= (2 * norm) ** (1 / depth))  # low norm
    align = np.array([(svds[k + 1][2][0] @ svds[k][0][:, 0]) ** 2 for k in range(depth - 1)])
    assert np.all(align >= 1 - eps / (2 * norm) ** (2 / depth))  # alignment


def test_sharpness_of_the_limit_is_near_the_lower_bound(corollary_run, prob):
    depth, _, ds = corollary_run
    f, x = obs.flat_risk(gflow.trajectory.model_from(ds), prob)
    S = float(np.linalg.eigvalsh(np.asarray(linalg.dense_hessian(f, x)))[-1])
    a, lam, Lam = float(prob.a), float(prob.lam), float(prob.Lam)
    S_lower = 2 * depth * a  # ‖π*‖ = 1, p = 1
    S_upper = 2 * math.sqrt((2 * depth - 1) * Lam**2 + (depth - 1) ** 2 * a**2)
    assert S_lower * (1 - 1e-6) <= S <= 4 * (Lam / lam) * S_upper
    print(f"L={depth}: S_final/S_lower = {S / S_lower:.4f}")


def test_time_is_stored_as_offset_plus_local(corollary_run):
    _, _, ds = corollary_run
    t_sw = ds.attrs["t_switch"]
    off, loc = ds.t_offset.values, ds.t_local.values
    np.testing.assert_array_equal(ds.time.values, off + loc)
    before, after = off == 0, off == t_sw
    assert np.all(before | after) and before.sum() >= 20 and after.sum() >= 20
    assert np.all(np.diff(loc[before]) >= 0) and np.all(np.diff(loc[after]) > 0)
    assert loc[before][-1] == pytest.approx(t_sw, rel=1e-12)
    assert 0 < loc[after][0] < 1e-2 * loc[after][-1]
    assert loc[after][-1] == pytest.approx(ds.attrs["t_final_local"])
    # the plateau is recorded too, log-spaced: the saves before the switch span > 20 decades
    positive = loc[before][loc[before] > 0]
    assert np.log10(t_sw / positive[0]) > 20
    # and the escape itself, at the saves where R has started to move but not yet halved
    e0 = float(ds.excess_risk[0])
    moving = (ds.excess_risk.values[before] < 0.999 * e0).sum()
    assert moving >= 3


def test_observables_stay_finite_on_the_plateau(corollary_run):
    _, _, ds = corollary_run
    for name in RECORD:
        assert np.all(np.isfinite(ds[name].values)), name
    # the PL ratio is above its pointwise bound wherever both are representable
    pl, lb = ds.pl_ratio.values, ds.pl_lower_bound.values
    both = (pl > 1e-290) & (lb > 1e-290)
    assert both.sum() >= 20 and np.all(pl[both] >= lb[both] * (1 - 1e-9))


@pytest.mark.parametrize("depth, max_steps", [(10, 100_000), (20, 5000), (40, 5000)])
def test_plain_clock_fails_with_a_status(prob, depth, max_steps):
    """In plain time the escape is not resolved: the status says so and R has not moved."""
    model = corollary_init(depth)
    opts = gflow.FlowOptions(clock="plain", t_max=1e300, saves=10, max_steps=max_steps)
    start = time.perf_counter()
    ds = gflow.solve(model, prob, opts, RECORD)
    elapsed = time.perf_counter() - start
    assert ds.attrs["clock"] == "plain"
    assert ds.attrs["status"] in ("max_steps", "solver_failed", "non_finite")
    e0 = float(obs.excess_risk(model, prob))
    assert float(ds.excess_risk[-1]) >= 0.99 * e0
    assert elapsed < 120  # bounded by max_steps, not a hang (≈ 4 s for 1e5 steps at L = 10)


def test_a_plateau_longer_than_t_max_is_reported(prob):
    model = corollary_init(10)
    ds = gflow.solve(model, prob, gflow.FlowOptions(t_max=1e20, saves=60, stop_at_excess_risk=1e-12), RECORD)
    assert ds.attrs["clock"] == "arclength" and ds.attrs["status"] == "reached_t_max"
    assert ds.attrs["t_final"] == pytest.approx(1e20, rel=1e-9)  # the horizon is root-found
    assert math.isnan(ds.attrs["t_switch"]) and np.all(ds.t_offset.values == 0)
    assert float(ds.excess_risk[-1]) == pytest.approx(float(ds.excess_risk[0]), rel=1e-6)


@pytest.mark.parametrize("scale", [0.15, 0.2])
def test_arclength_clock_follows_the_plain_path(prob, scale):
    """Where both clocks work, the saved weights agree at the same absolute times.

    The escape time is ill-conditioned: a relative error δ in the plateau weights moves it
    by ≈ (L − 2)δ·t_escape, so the clocks can only agree to ~rtol·L·t_escape·|dw/dt|
    (≈ 1e-8 at rtol 1e-12 for t_escape ≈ 2e3; at scale 0.1, t_escape ≈ 5e4, both
    solvers are off by 2e-7 against a rtol-1e-13 reference).
    """
    model = models.mlp(jax.random.key(0), models.mlp_widths(5, 10, 5), scale)
    kw = dict(rtol=1e-12, atol=1e-14, t_max=1e6, saves=60, stop_at_excess_risk=1e-12)
    ds = gflow.solve(model, prob, gflow.FlowOptions(clock="arclength", **kw), ("end_to_end", "singular_values"))
    assert ds.attrs["status"] == "converged" and 1e2 < ds.attrs["t_switch"] < 1e4
    assert float(flow.plateau_time(model, prob)) < math.log10(flow.AUTO_PLATEAU_TIME)  # auto: plain
    dense = flow.dense_solution(model, prob, gflow.FlowOptions(clock="plain", **kw))
    t = ds.time.values
    t = t[t <= dense.t_final]
    assert t.size >= 50
    at = jax.vmap(dense.model_at)(jnp.asarray(t))
    plain_w = np.asarray(jax.vmap(gflow.end_to_end)(at))
    plain_s = np.asarray(jax.vmap(lambda m: obs.singular_values(m, prob))(at))
    np.testing.assert_allclose(ds.end_to_end.values[: t.size], plain_w, atol=1e-7, rtol=0)
    np.testing.assert_allclose(ds.singular_values.values[: t.size], plain_s, atol=1e-7, rtol=0)


def test_robust_norms_do_not_underflow():
    tree = {"a": jnp.array([3e-200, 0.0]), "b": jnp.array([[4e-200]])}
    unit, log_norm = clock._direction(tree)
    assert float(log_norm) == pytest.approx(math.log(5e-200), rel=1e-14)
    np.testing.assert_allclose(unit["a"], [0.6, 0.0], rtol=1e-14)
    np.testing.assert_allclose(unit["b"], [[0.8]], rtol=1e-14)
    assert float(obs.squared_norm(tree, log=True)) == pytest.approx(2 * math.log(5e-200), rel=1e-14)
    assert float(obs.squared_norm(tree)) == 0.0  # 2.5e-399 is not a float64
    zero, log_zero = clock._direction({"a": jnp.zeros(3)})
    assert np.all(np.asarray(zero["a"]) == 0) and float(log_zero) == -math.inf


def test_plateau_time_is_the_auto_criterion(prob, paper_mlp):
    assert float(flow.plateau_time(paper_mlp, prob)) < math.log10(flow.AUTO_PLATEAU_TIME)
    assert float(flow.plateau_time(corollary_init(10), prob)) > 25


def test_moderate_inits_keep_the_plain_clock(prob, paper_mlp):
    ds = gflow.solve(paper_mlp, prob, gflow.FlowOptions(), RECORD)
    assert ds.attrs["clock"] == "plain" and ds.attrs["status"] == "converged"
    assert math.isnan(ds.attrs["t_switch"]) and ds.attrs["num_steps_arclength"] == 0
    np.testing.assert_array_equal(ds.t_offset.values, 0.0)
    np.testing.assert_array_equal(ds.t_local.values, ds.time.values)


@pytest.mark.parametrize("kwargs, message", [(dict(clock="log"), "clock"), (dict(switch_at=1.0), "switch_at")])
def test_bad_clock_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gflow.FlowOptions(**kwargs)


def test_each_phase_compiles_one_solve_for_both_passes(monkeypatch):
    """The two passes of a phase (locate its end, then save along it) run one compiled
    program: their save grids must have the same type, not one weakly typed (measured: the
    second trace and compilation doubled the cost of an arc-length solve). With stored
    programs (`compilation.exported`), one key per phase; without, one trace per phase."""
    from gflow import compilation, solver

    prob = problem.gaussian(17, 3, seed=4)  # shapes no other test compiles
    net = models.mlp(jax.random.key(4), models.mlp_widths(3, 3, 3), 0.5)
    phases = (clock.integrate_plateau.__wrapped__, solver.integrate.__wrapped__)
    keys = collections.defaultdict(set)
    real_key = compilation.program_key
    monkeypatch.setattr(compilation, "program_key",
                        lambda fn, static, leaves: keys[fn.__qualname__].add(k := real_key(fn, static, leaves)) or k)
    before = [fn._cached._cache_size() for fn in phases]
    ds = flow.solve(net, prob, gflow.FlowOptions(t_max=1e4, saves=6, clock="arclength"), ["risk"])
    assert ds.attrs["clock"] == "arclength" and np.isfinite(ds.attrs["t_switch"])
    if compilation._exported_folder() is not None:
        assert [len(keys[fn.__qualname__]) for fn in phases] == [1, 1], dict(keys)
    else:
        assert [fn._cached._cache_size() - b for fn, b in zip(phases, before)] == [1, 1]
