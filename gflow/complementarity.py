"""The semidefinite complementarity problem of the central flow (theory.md §11).

At the edge of stability the central flow moves as dw/dt = −∇R − v with v = ½Σ_{ij} X_ij D_ij,
where u_1, …, u_k are the Hessian's top eigenvectors, D_ij = ∇³R[u_i, u_j] = ∇(u_iᵀ∇²R u_j)
and X ⪰ 0 is a k × k matrix. Along that motion d(2/η − UᵀHU)/dt = α + B[X] with

    α_ij = ⟨D_ij, ∇R⟩ (+ a relaxation term),    B[X]_ij = ½⟨D_ij, Σ_kl X_kl D_kl⟩,

and X solves the complementarity problem

    X ⪰ 0,   Y = α + B[X] ⪰ 0,   ⟨X, Y⟩ = 0

(no eigenvalue may rise past 2/η, and X pushes only on those that would). B is positive
semidefinite, so this is the optimality condition of the convex problem
min_{X ⪰ 0} J(X) = ¼‖Σ X_kl D_kl‖² + ⟨α, X⟩.

Symmetric matrices are handled in *pair coordinates*: x_p = X_ij for the pairs p = (i ≤ j),
with F_p = D_ii or 2D_ij and a_p = α_ii or 2α_ij, so that Σ X_kl D_kl = Σ x_p F_p and
J = ¼ xᵀFFᵀx + aᵀx.

- [`equality_solution`][] (JAX, inside the flow): Y = 0 on the active eigenvalues, a
  linear system; it is the complementarity solution as long as it is ⪰ 0, and the flow's
  events end a phase where it stops being so.
- [`solve`][] (NumPy, at the phase boundaries): the exact solution of the complementarity
  problem, whatever the rank of X.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from gflow import linalg

ITERATIONS = 500
"""Cap on the accelerated projected-gradient iterations of [`solve`][] (k ≤ 5: cheap)."""

NEWTON_STEPS = 30
"""Cap on the Newton steps that polish each candidate face (quadratic: a few suffice)."""

RANK_RTOL = 1e-8
"""Eigenvalues of X below this fraction of its largest count as zero (its rank, its face)."""


def pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j), i ≤ j, of the k(k + 1)/2 pair coordinates, row by row."""
    i, j = np.triu_indices(k)
    return i, j


def pair_weights(k: int) -> np.ndarray:
    """1 for a diagonal pair, 2 for an off-diagonal one: F_p = w_p D_p, a_p = w_p α_p."""
    i, j = pairs(k)
    return np.where(i == j, 1.0, 2.0)


def from_pairs(x, k: int, xp=jnp):
    """The symmetric k × k matrix with pair coordinates x (rows of x: a (k, k, …) array)."""
    i, j = pairs(k)
    X = xp.zeros((k, k, *x.shape[1:]), x.dtype)
    if xp is jnp:
        return X.at[i, j].set(x).at[j, i].set(x)
    X[i, j] = x
    X[j, i] = x
    return X


def equality_solution(F, a, active):
    """Pair coordinates of X solving Y = 0 on the `active` eigenvalues (a boolean mask of
    length k; X is zero outside them): ½FFᵀx = −a restricted to the active pairs."""
    k = active.shape[0]
    i, j = pairs(k)
    on = active[i] & active[j]
    G = 0.5 * F @ F.T
    G = jnp.where(on[:, None] & on[None, :], G, jnp.eye(on.size, dtype=G.dtype))
    return linalg.solve(G, -jnp.where(on, a, 0.0))


def smallest_active_eigenvalue(X, active):
    """The smallest eigenvalue of X on its active block (+inf when nothing is active)."""
    big = jnp.max(jnp.abs(X)) + 1.0
    masked = jnp.where(active[:, None] & active[None, :], X, 0.0) + jnp.diag(jnp.where(active, 0.0, big))
    return jnp.where(jnp.any(active), linalg.eigvalsh(masked)[0], jnp.inf)


def objective(X: np.ndarray, alpha: np.ndarray, D: np.ndarray) -> float:
    """J(X) = ¼‖Σ X_kl D_kl‖² + ⟨α, X⟩ (D of shape (k, k, P))."""
    v = np.einsum("kl,klp->p", X, D)
    return 0.25 * float(v @ v) + float(np.sum(alpha * X))


def slack(X: np.ndarray, alpha: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Y = α + B[X] = α + ½⟨D_ij, Σ X_kl D_kl⟩, the gradient of J."""
    v = np.einsum("kl,klp->p", X, D)
    return alpha + 0.5 * np.einsum("ijp,p->ij", D, v)


def _psd_part(S: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh((S + S.T) / 2)
    return (V * np.clip(w, 0.0, None)) @ V.T


def _refine(L: np.ndarray, alpha: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Newton's method on J(LLᵀ) over the factor L (k × r), from a nearby L: the gradient is
    2YL and the Hessian is formed column by column from its action
    Δ ↦ 2YΔ + 2B[ΔLᵀ + LΔᵀ]L; a least-squares step handles the rotations L ↦ LQ, along
    which J does not change. Converges quadratically to the minimizer of rank ≤ r nearby."""
    k, r = L.shape
    basis = np.eye(k * r).reshape(k * r, k, r)
    zero = np.zeros_like(alpha)
    for _ in range(NEWTON_STEPS):
        Y = slack(L @ L.T, alpha, D)
        grad = (2 * Y @ L).ravel()
        if np.abs(grad).max() <= 1e-15 * (np.abs(Y).max() + 1) * (np.abs(L).max() + 1):
            break
        H = np.stack([(2 * Y @ E + 2 * slack(E @ L.T + L @ E.T, zero, D) @ L).ravel() for E in basis], axis=1)
        L = L - np.linalg.lstsq((H + H.T) / 2, grad, rcond=1e-13)[0].reshape(k, r)
    return L


def solve(alpha, D) -> np.ndarray:
    """The solution X of the complementarity problem for α (k × k) and D (k, k, P).

    Accelerated projected gradient on J (Nesterov, restarted when J rises) comes close to X
    and to its rank; Newton's method on the factor L of X = LLᵀ, started from the iterate's
    top r eigenpairs for r = rank, …, 1, then converges to the minimizer on each face to
    round-off. Every candidate is ⪰ 0 and the convex J is least at the solution, so the
    candidate with the least J is returned (among those that round-off cannot tell apart,
    the one with the least [`residual`][]). With k ≤ 5 it costs milliseconds.
    """
    alpha = np.asarray(alpha, np.float64)
    D = np.asarray(D, np.float64)
    k = alpha.shape[0]
    flat = D.reshape(k * k, -1)
    lipschitz = 0.5 * np.linalg.eigvalsh(flat @ flat.T)[-1]
    if not lipschitz > 0:
        return np.zeros((k, k))
    X = Z = np.zeros((k, k))
    theta, value = 1.0, objective(X, alpha, D)
    for _ in range(ITERATIONS):
        X_next = _psd_part(Z - slack(Z, alpha, D) / lipschitz)
        new = objective(X_next, alpha, D)
        if new > value:  # restart the momentum
            theta, Z = 1.0, X
            continue
        theta_next = (1 + np.sqrt(1 + 4 * theta**2)) / 2
        Z = X_next + (theta - 1) / theta_next * (X_next - X)
        step = np.abs(X_next - X).max()
        X, theta, value = X_next, theta_next, new
        if step <= 1e-10 * (np.abs(X).max() + 1e-300):
            break
    w, V = np.linalg.eigh(X)
    candidates = [X, np.zeros_like(X)]
    for r in range(1, rank(X) + 1):
        L = _refine(V[:, -r:] * np.sqrt(np.clip(w[-r:], 0.0, None)), alpha, D)
        candidates.append(L @ L.T)
    values = [objective(C, alpha, D) for C in candidates]
    least = min(values)
    ties = [C for C, v in zip(candidates, values) if v <= least + 1e-12 * (abs(least) + 1e-300)]
    return min(ties, key=lambda C: residual(C, alpha, D))  # J cannot tell apart what round-off hides


def residual(X: np.ndarray, alpha: np.ndarray, D: np.ndarray) -> float:
    """How far X is from solving the problem, relative to the size of its terms: the largest
    of −λ_min(X)/‖X‖, −λ_min(Y)/(‖α‖ + ‖B[X]‖) and |⟨X, Y⟩|/(‖X‖(‖α‖ + ‖B[X]‖)), with
    max-entry norms."""
    Y = slack(X, alpha, D)
    y = np.abs(alpha).max() + np.abs(Y - alpha).max() + 1e-150
    x = np.abs(X).max() + 1e-150
    worst = max(-np.linalg.eigvalsh(X)[0] / x, -np.linalg.eigvalsh(Y)[0] / y, abs(np.sum(X * Y)) / (x * y))
    return max(worst, 0.0)


def rank(X: np.ndarray) -> int:
    """The number of eigenvalues of X above `RANK_RTOL` of the largest (0 for X = 0)."""
    w = np.linalg.eigvalsh(X)
    return int(np.sum(w > RANK_RTOL * max(w.max(), 0.0))) if w.max() > 0 else 0
