"""The central flow's complementarity problem, against independent solutions.

The brute force minimizes the same convex objective J(X) = ¼‖Σ X_kl D_kl‖² + ⟨α, X⟩ over
X = LLᵀ (any L, so every X ⪰ 0) with SciPy's BFGS from many random starts, and keeps the
best: it knows nothing of faces, ranks or Newton steps.
"""

import numpy as np
import pytest
from scipy.optimize import minimize

from gflow import complementarity as cp


def _instance(k, seed, scale=3.0):
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((k, k, 3 * k * k + 2))
    D = (D + D.transpose(1, 0, 2)) / 2
    A = rng.standard_normal((k, k))
    return scale * (A + A.T) / 2, D


def _brute_force(alpha, D, starts=25, seed=0):
    k = alpha.shape[0]
    rng = np.random.default_rng(seed)
    lower = np.tril_indices(k)

    def J(l):
        L = np.zeros((k, k))
        L[lower] = l
        return cp.objective(L @ L.T, alpha, D)

    best = min((minimize(J, rng.standard_normal(lower[0].size), method="BFGS", options=dict(gtol=1e-13))
                for _ in range(starts)), key=lambda r: r.fun)
    L = np.zeros((k, k))
    L[lower] = best.x
    return L @ L.T


@pytest.mark.parametrize("k, seed", [(2, 0), (2, 1), (3, 2), (3, 3), (4, 4), (5, 5)])
def test_solution_matches_brute_force(k, seed):
    alpha, D = _instance(k, seed)
    X = cp.solve(alpha, D)
    Xb = _brute_force(alpha, D)
    # no worse than the brute force's minimum, and the same point (BFGS stops at ~1e-8)
    assert cp.objective(X, alpha, D) <= cp.objective(Xb, alpha, D) + 1e-13
    np.testing.assert_allclose(X, Xb, atol=1e-6)
    # and exact: complementarity to round-off, where the brute force is not
    assert cp.residual(X, alpha, D) < 1e-12
    Y = cp.slack(X, alpha, D)
    assert np.linalg.eigvalsh(X)[0] > -1e-12 and np.linalg.eigvalsh(Y)[0] > -1e-12 * np.abs(Y).max()


def test_one_eigenvalue_is_the_closed_form():
    """k = 1: X = σ² with σ² = max(0, −2⟨∇λ, ∇R⟩/‖∇λ‖²) (α = ⟨∇λ, ∇R⟩, D = ∇λ)."""
    rng = np.random.default_rng(7)
    grad_lam = rng.standard_normal(20)
    for a in (-1.3, 0.0, 2.1):
        X = cp.solve(np.array([[a]]), grad_lam[None, None])
        assert X[0, 0] == pytest.approx(max(0.0, -2 * a / (grad_lam @ grad_lam)), abs=1e-15)


def test_nothing_to_push_gives_zero():
    _, D = _instance(3, 8)
    assert np.all(cp.solve(np.diag([1.0, 2.0, 0.5]), D) == 0)


def test_rank_deficient_solution_is_found():
    """A direction with a large positive α is left alone: X has lower rank, on the others."""
    alpha, D = _instance(3, 9)
    alpha[2, :] = alpha[:, 2] = 0.0
    alpha[2, 2] = 50.0
    X = cp.solve(alpha, D)
    assert cp.rank(X) < 3 and cp.residual(X, alpha, D) < 1e-12
    np.testing.assert_allclose(X, _brute_force(alpha, D), atol=1e-6)


def test_equality_solution_solves_its_linear_system():
    """On the active block Y = α + B[X] = 0; outside it X = 0."""
    k = 3
    alpha, D = _instance(k, 10)
    i, j = cp.pairs(k)
    w = cp.pair_weights(k)
    F = w[:, None] * D[i, j]
    active = np.array([True, True, False])
    X = np.asarray(cp.from_pairs(cp.equality_solution(F, w * alpha[i, j], active), k))
    Y = cp.slack(X, alpha, D)
    np.testing.assert_allclose(Y[:2, :2], 0.0, atol=1e-12)
    assert np.all(X[2] == 0) and np.all(X[:, 2] == 0)
