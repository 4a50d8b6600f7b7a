import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow import continued, flow, linalg, models, observables as obs, problem


@pytest.fixture
def model():
    return models.mlp(jax.random.key(7), [5, 6, 4, 4, 1], 0.6)


def test_gradient_norm_matches_a_flat_gradient(model, paper_problem):
    f, x = obs.flat_risk(model, paper_problem)
    g = np.asarray(jax.grad(f)(x))
    assert float(obs.grad_norm_sq(model, paper_problem)) == pytest.approx(g @ g, rel=1e-12)


def test_pl_ratio_is_above_its_pointwise_bound(paper_problem):
    for seed in range(5):
        m = models.mlp(jax.random.key(seed), models.mlp_widths(5, 6, 5), 0.5)
        assert float(obs.pl_ratio(m, paper_problem)) >= float(obs.pl_lower_bound(m, paper_problem))


def test_first_layer_gradient_identity(model, paper_problem):
    # ‖∂R/∂W_1‖_F² = ‖pᵀW_L⋯W_2‖² ‖g‖² (theory.md §4), the heart of the PL bound.
    g1 = obs.risk_gradient(model, paper_problem).blocks[0][0]
    r = models.row_product(model, skip=1)
    g = paper_problem.risk_gradient(models.end_to_end(model))
    assert float(jnp.sum(g1**2)) == pytest.approx(float((r @ r) * (g @ g)), rel=1e-12)


@pytest.mark.parametrize("widths", [[5, 6, 4, 4, 1], [5, 5, 5, 5, 3, 3, 1]])  # blocks of 1 layer; of 3 and 2
def test_per_layer_spectral_observables_match_numpy(widths, paper_problem):
    model = models.mlp(jax.random.key(7), widths, 0.6)
    layers = [np.asarray(w) for w in model.layers()]
    svals = [np.linalg.svd(w, compute_uv=False) for w in layers]
    np.testing.assert_allclose(obs.singular_values(model, paper_problem), [s[0] for s in svals], rtol=1e-12)
    np.testing.assert_allclose(
        obs.rank_one_gap(model, paper_problem), [np.sum(s[1:] ** 2) for s in svals], rtol=1e-10, atol=1e-14
    )
    expected = []
    for lower, upper in zip(layers[:-1], layers[1:]):
        u = np.linalg.svd(lower)[0][:, 0]
        v = np.linalg.svd(upper)[2][0]
        expected.append((u @ v) ** 2)
    np.testing.assert_allclose(obs.alignment(model, paper_problem), expected, rtol=1e-10)


def test_balance_drift_measures_the_change_of_the_conserved_quantity(model, paper_problem):
    assert np.all(np.asarray(obs.balance_drift(model, paper_problem, model)) == 0)
    layers = [np.asarray(w) for w in model.layers()]
    moved = models.from_layers([layers[0], 2 * layers[1], *layers[2:]])
    drift = np.asarray(obs.balance_drift(moved, paper_problem, model))
    D = lambda a, b: b.T @ b - a @ a.T  # noqa: E731
    expected = [
        np.linalg.norm(D(layers[0], 2 * layers[1]) - D(layers[0], layers[1])),
        np.linalg.norm(D(2 * layers[1], layers[2]) - D(layers[1], layers[2])),
        0.0,
    ]
    np.testing.assert_allclose(drift, expected, rtol=1e-12, atol=1e-14)


def test_sharpness_observable_is_the_top_hessian_eigenvalue(model, paper_problem):
    f, x = obs.flat_risk(model, paper_problem)
    top = np.linalg.eigvalsh(np.asarray(linalg.dense_hessian(f, x)))[-1]
    assert float(obs.sharpness(model, paper_problem)) == pytest.approx(top, rel=1e-10)


def test_unknown_names_and_user_observables():
    with pytest.raises(KeyError, match="unknown observable"):
        obs.get(["risk", "nope"])

    @obs.register("first_layer_norm", description="‖W_1‖_F")
    def first_layer_norm(model, problem):
        return jnp.linalg.norm(model.layers()[0])

    (o,) = obs.get(["first_layer_norm"])
    m = models.mlp(jax.random.key(0), [3, 2, 1], 1.0)
    assert float(o(m, None, m)) == pytest.approx(float(np.linalg.norm(m.layers()[0])))
    del obs.REGISTRY["first_layer_norm"]


# --- the top of the Hessian's spectrum, continued from save to save (issue 14) -----------------


def _dense_top(model, prob, k=5):
    f, x = obs.flat_risk(model, prob)
    return np.linalg.eigvalsh(np.asarray(linalg.dense_hessian(f, x)))[::-1][:k]


def test_top_eigenvalues_observable_matches_the_dense_hessian(model, paper_problem):
    top = _dense_top(model, paper_problem)
    np.testing.assert_allclose(obs.top_eigenvalues(model, paper_problem), top, rtol=0, atol=1e-10 * top[0])
    tiny = models.mlp(jax.random.key(0), [2, 1, 1], 0.8)  # 3 parameters: the rest is NaN
    values = np.asarray(obs.top_eigenvalues(tiny, problem.gaussian(10, 2, seed=0)))
    np.testing.assert_allclose(values[:3], _dense_top(tiny, problem.gaussian(10, 2, seed=0), 3), rtol=1e-10, atol=1e-12)
    assert np.all(np.isnan(values[3:]))


def _saddle():
    """A point where the most negative Hessian eigenvalue is larger in modulus than the top one."""
    prob = problem.gaussian(50, 5, seed=0, unit_pi_star=False)
    return models.mlp(jax.random.key(1), models.mlp_widths(5, 6, 5), 0.2), prob


def test_along_continues_eigensolvers_from_save_to_save_and_skips_unused_slots():
    model, prob = _saddle()
    params, static = eqx.partition(model, models.trainable(model))
    scales = [1.0, 1.02, 1.05, 1.5, 3.0, np.inf]  # a slowly moving point, then a jump, then an unused slot
    states = (jax.tree.map(lambda w: jnp.stack([w * s for s in scales]), params), jnp.zeros(len(scales)))

    def each(y):
        return {"risk": obs.risk(eqx.combine(y[0], static), prob)}

    out = continued.along(obs.get(["sharpness", "top_eigenvalues"]), states, static, prob, each)
    for i, s in enumerate(scales[:-1]):
        scaled = eqx.combine(jax.tree.map(lambda w: w * s, params), static)
        top = _dense_top(scaled, prob)
        assert float(out["sharpness"][i]) == pytest.approx(top[0], rel=1e-10)
        np.testing.assert_allclose(out["top_eigenvalues"][i], top, rtol=0, atol=1e-10 * abs(top[0]))
        assert float(out["risk"][i]) == pytest.approx(float(obs.risk(scaled, prob)), rel=1e-14)
    assert np.isnan(out["sharpness"][-1]) and np.all(np.isnan(out["top_eigenvalues"][-1])) and np.isnan(out["risk"][-1])


def test_a_solve_records_the_top_hessian_eigenvalues_at_every_save():
    """Along a solve the eigensolvers start from the previous save's eigenvectors (after the
    solve, from the saved weights): every save still agrees with a dense eigvalsh, from a
    saddle-like start (|λ_min| > λ_max) to the rank-one regime."""
    model, prob = _saddle()
    opts = gflow.FlowOptions(t_max=40.0, saves=9, t_first=1.0, clock="plain", stop_at_excess_risk=0.0)
    ds = gflow.solve(model, prob, opts, ["risk", "sharpness", "top_eigenvalues"])
    dense = flow.dense_solution(model, prob, opts)
    assert ds.sizes["time"] == 9
    for t, s, top5 in zip(ds.time.values, ds.sharpness.values, ds.top_eigenvalues.values):
        top = _dense_top(dense.model_at(t), prob)
        assert s == pytest.approx(top[0], rel=1e-10)
        np.testing.assert_allclose(top5, top, rtol=0, atol=1e-10 * abs(top[0]))
    first = _dense_top(model, prob)
    f, x = obs.flat_risk(model, prob)
    assert -np.linalg.eigvalsh(np.asarray(linalg.dense_hessian(f, x)))[0] > 1.2 * first[0]  # the start is a saddle
    assert ds.sharpness.values[-1] > 2 * ds.sharpness.values[0]  # and the flow leaves it


def test_continued_observables_survive_jit_and_re_registration():
    names = ["risk", "sharpness", "top_eigenvalues"]
    leaves, treedef = jax.tree.flatten(obs.get(names))
    rebuilt = jax.tree.unflatten(treedef, leaves)  # what jit hands a function: new objects
    inline, warm = continued.split(rebuilt)
    assert [o.name for o in inline] == ["risk"] and [o.name for o in warm] == ["sharpness", "top_eigenvalues"]
    original = obs.REGISTRY["sharpness"]
    try:
        obs.register("sharpness")(lambda model, problem: jnp.zeros(()))
        assert [o.name for o in continued.split(obs.get(names))[1]] == ["top_eigenvalues"]
    finally:
        obs.REGISTRY["sharpness"] = original


@pytest.mark.parametrize("activation", ["linear", "gelu"])
def test_observables_after_the_solve_equal_those_inside_it(activation):
    """With a continued observable the others are evaluated after the solve, from the saved
    weights (`continued.along`); without one, inside it. Both give the same values: the same
    functions at the same saved states, differing at most by XLA's fusion (round-off)."""
    prob = problem.gaussian(20, 3, seed=0)
    model = models.mlp(jax.random.key(2), models.mlp_widths(3, 3, 4), 0.5, activation)
    names = obs.applicable([o for o in obs.DEFAULT if o != "sharpness"], activation)
    opts = gflow.FlowOptions(t_max=20.0, saves=25, clock="plain")
    inside = gflow.solve(model, prob, opts, names)
    after = gflow.solve(model, prob, opts, [*names, "sharpness"])
    np.testing.assert_array_equal(after.time.values, inside.time.values)
    for name in names:
        np.testing.assert_allclose(after[name].values, inside[name].values, rtol=1e-13, atol=0, err_msg=name)


def test_save_slots_after_the_end_feed_no_inf_to_lapack(capfd):
    """A solve that converges before its last save time leaves slots that Diffrax fills with
    inf. The observables evaluated after the solve must not run on them: LAPACK's SVD
    prints warnings on stdout for inf input (a `gflow run --quiet` must print nothing)."""
    prob = problem.gaussian(20, 3, seed=0)
    model = models.mlp(jax.random.key(0), models.mlp_widths(3, 3, 3), 0.5)
    opts = gflow.FlowOptions(t_max=1e4, saves=40, clock="plain")
    ds = gflow.solve(model, prob, opts, ["risk", "singular_values", "rank_one_gap", "sharpness"])
    assert ds.attrs["status"] == "converged" and ds.sizes["time"] < 40
    assert np.all(np.isfinite(ds.singular_values.values))
    assert capfd.readouterr().out == ""
