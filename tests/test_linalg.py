import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gflow import linalg, models, observables, problem


def _dense_and_lanczos(model, prob):
    f, x = observables.flat_risk(model, prob)
    eigs = np.linalg.eigvalsh(np.asarray(linalg.dense_hessian(f, x)))
    return eigs, float(linalg.top_hessian_eigenvalue(f, x))


@pytest.mark.parametrize(
    "depth, width, scale, seed",
    [(10, 5, 0.35, 0), (10, 5, 0.6, 1), (3, 7, 1.0, 2), (2, 4, 1.0, 3), (5, [3, 8, 2, 6], 0.8, 4)],
)
def test_lanczos_matches_dense_hessian_at_random_points(paper_problem, depth, width, scale, seed):
    model = models.mlp(jax.random.key(seed), models.mlp_widths(5, depth, width), scale)
    eigs, top = _dense_and_lanczos(model, paper_problem)
    assert top == pytest.approx(eigs[-1], rel=1e-8)


def test_lanczos_matches_dense_hessian_residual():
    prob = problem.gaussian(40, 6, seed=1)
    model = models.residual(jax.random.key(1), 6, 8, 0.5)
    eigs, top = _dense_and_lanczos(model, prob)
    assert top == pytest.approx(eigs[-1], rel=1e-8)


def test_lanczos_returns_largest_algebraic_not_largest_modulus():
    # A saddle-like point: the most negative eigenvalue is larger in modulus than the top one.
    prob = problem.gaussian(50, 5, seed=0, unit_pi_star=False)
    model = models.mlp(jax.random.key(1), models.mlp_widths(5, 6, 5), 0.2)
    eigs, top = _dense_and_lanczos(model, prob)
    assert -eigs[0] > 1.2 * eigs[-1] > 0  # the case is what it claims to be
    assert top == pytest.approx(eigs[-1], rel=1e-8)


def test_lanczos_survives_an_exhausted_krylov_space():
    # Identity plus a rank-one term: the Krylov space from any start has dimension 2,
    # so plain Lanczos breaks down after two steps.
    dim = 30
    u = jnp.arange(1.0, dim + 1) / dim
    A = jnp.eye(dim) + 3.0 * jnp.outer(u, u) / (u @ u)
    ritz = linalg.lanczos_ritz_values(lambda v: A @ v, dim, steps=12)
    assert np.all(np.isfinite(ritz))
    assert float(ritz[-1]) == pytest.approx(4.0, rel=1e-12)
    assert float(ritz[0]) == pytest.approx(1.0, rel=1e-12)


def test_lanczos_with_more_steps_than_dimensions_is_exact():
    rng = np.random.default_rng(0)
    B = rng.standard_normal((7, 7))
    A = jnp.asarray(B + B.T)
    ritz = linalg.lanczos_ritz_values(lambda v: A @ v, 7, steps=50)
    np.testing.assert_allclose(ritz, np.linalg.eigvalsh(B + B.T), rtol=1e-10, atol=1e-12)


def test_hvp_matches_dense_hessian(paper_problem, paper_mlp):
    f, x = observables.flat_risk(paper_mlp, paper_problem)
    v = jax.random.normal(jax.random.key(3), x.shape)
    np.testing.assert_allclose(linalg.hvp(f, x, v), linalg.dense_hessian(f, x) @ v, rtol=1e-10, atol=1e-12)


def test_top_singular_triplet():
    W = np.random.default_rng(0).standard_normal((4, 6))
    s, u, v = linalg.top_singular_triplet(jnp.asarray(W))
    assert float(s) == pytest.approx(np.linalg.norm(W, 2), rel=1e-12)
    np.testing.assert_allclose(W @ np.asarray(v), float(s) * np.asarray(u), atol=1e-12)
