"""Curvature and spectra: Hessian-vector products, Lanczos, dense Hessians, SVDs.

Sharpness is the largest *algebraic* Hessian eigenvalue (theory.md §1): away from a
minimizer the most negative eigenvalue can be larger in modulus, and power iteration
would return that one. Lanczos gives both ends of the spectrum at once.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

_START_KEY = jax.random.key(20240513)


def hvp(f: Callable, x: Float[Array, " P"], v: Float[Array, " P"]) -> Float[Array, " P"]:
    """Hessian-vector product ∇²f(x) v (forward-over-reverse)."""
    return jax.jvp(jax.grad(f), (x,), (v,))[1]


def lanczos_ritz_values(
    matvec: Callable[[Array], Array], dim: int, steps: int = 40, key=_START_KEY
) -> Float[Array, " m"]:
    """Ritz values (ascending) of a symmetric operator after `min(steps, dim)` Lanczos steps.

    Full reorthogonalization (twice, Gram–Schmidt), and the Ritz values are the
    eigenvalues of the projected matrix VᵀHV built from the stored products HV, so
    they stay inside the true spectrum even where plain Lanczos would lose
    orthogonality. When the Krylov space is exhausted early (an invariant subspace),
    the basis is continued with a fresh random direction instead of dividing by ~0.
    The start vector is a fixed pseudo-random vector: results are deterministic.
    """
    m = min(int(steps), int(dim))

    def orthogonalize(V, w):
        w = w - V.T @ (V @ w)
        return w - V.T @ (V @ w)

    def body(j, carry):
        V, HV, v = carry
        V = V.at[j].set(v)
        w = matvec(v)
        HV = HV.at[j].set(w)
        w = orthogonalize(V, w)
        fresh = orthogonalize(V, jax.random.normal(jax.random.fold_in(key, j + 1), (dim,), v.dtype))
        scale = jnp.linalg.norm(HV[j]) + jnp.finfo(v.dtype).tiny
        w = jnp.where(jnp.linalg.norm(w) > 1e-10 * scale, w, fresh)
        return V, HV, w / jnp.linalg.norm(w)

    v0 = jax.random.normal(key, (dim,), jnp.float64)
    V = jnp.zeros((m, dim), v0.dtype)
    V, HV, _ = jax.lax.fori_loop(0, m, body, (V, V, v0 / jnp.linalg.norm(v0)))
    T = V @ HV.T
    return jnp.linalg.eigvalsh((T + T.T) / 2)


def top_hessian_eigenvalue(f: Callable, x: Float[Array, " P"], steps: int = 40) -> Float[Array, ""]:
    """Largest algebraic eigenvalue of ∇²f(x), by Lanczos on Hessian-vector products."""
    grad = jax.grad(f)
    _, lin = jax.linearize(grad, x)  # one linearization, reused by every product
    return lanczos_ritz_values(lin, x.shape[0], steps)[-1]


def dense_hessian(f: Callable, x: Float[Array, " P"]) -> Float[Array, "P P"]:
    """The full Hessian ∇²f(x) (for checks and small models: cost grows like P²)."""
    H = jax.hessian(f)(x)
    return (H + H.T) / 2


def top_singular_triplet(W: Float[Array, "m n"]):
    """(σ_1, u_1, v_1) of W: top singular value with its left and right vectors."""
    U, s, Vh = jnp.linalg.svd(W, full_matrices=False)
    return s[0], U[:, 0], Vh[0]
