import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gflow import linalg, models, observables as obs


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


def test_per_layer_spectral_observables_match_numpy(model, paper_problem):
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
    assert float(obs.sharpness(model, paper_problem)) == pytest.approx(top, rel=1e-8)


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
