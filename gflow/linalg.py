"""Curvature and spectra: Hessian-vector products, Lanczos, dense Hessians, SVDs.

Sharpness is the largest *algebraic* Hessian eigenvalue (theory.md §1): away from a
minimizer the most negative eigenvalue can be larger in modulus, and power iteration would
return that one. Lanczos gives both ends of the spectrum at once.

**Stopping rule of `lanczos_top`.** A Ritz pair (θ, y) with residual r = Hy − θy has an
eigenvalue within ‖r‖ of θ, and within ‖r‖²/gap when no other eigenvalue is within `gap` of
θ (Kato–Temple): the value converges like the square of the vector. The gap is taken from
the neighbouring Ritz values, each widened by its own residual, so a neighbour that has not
settled (a poor estimate of the next eigenvalue) keeps the run going; the first pair not
wanted must moreover be apart from the last one wanted. The run stops once min(‖r‖,
‖r‖²/gap) ≤ `tol`·max|θ| for each of the k values (the estimate is returned as `errors`; on
the tests here it exceeds the true error 2–10×).

**Warm start of `lanczos_top`.** `start` may hold the eigenvectors of a nearby operator (the
previous save of a trajectory): they converge in a few products where a random start needs
tens. [`warm_start`][] mixes in a little of a random vector: a warm start exactly orthogonal
to the new top eigenvector (after a crossing of eigenvalues) would otherwise never find it,
and the rule above makes the run resolve that admixture first.

**The algorithm of `lanczos_top`.** The basis holds at most `basis` vectors: the projected
matrix is diagonalized after every product to test convergence, which is cheap at that size,
and a pass of reorthogonalization costs `basis`·P. Each product Hv_j is orthogonalized
against the basis (twice) as soon as it is formed and kept as the pending direction f_j that
becomes vector j + k (band Lanczos: a block of k ≥ the multiplicity of an eigenvalue finds
every copy). For any Ritz pair (θ, y = Σ s_l v_l), Hy − θy = Σ s_l f_l over the last k
vectors only, so residuals cost O(k²P). When the basis is full it is replaced by the top
Ritz vectors (thick restart, Wu and Simon 2000): the pending directions stay orthogonal to
them and Hy_i = θ_i y_i + Σ s_il f_l, so the Lanczos process goes on as if unrestarted on
the subspace kept. An exhausted Krylov space (a pending direction ≈ 0) is continued with a
fresh random direction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

_START_KEY = jax.random.key(20240513)


# --- LAPACK, one matrix per call (docs/design.md, "A hang in XLA:CPU") ---------------------


def _one_matrix_per_call(fn: Callable) -> Callable:
    """fn, but under `vmap` a loop over the batch: each LAPACK call gets one matrix.

    jaxlib 0.10's CPU kernels spread a batch of matrices over XLA's thread pool from a
    thread of that same pool and block until it is done; two such calls at once hold both
    threads of a 2-core pool and wait forever. A single matrix runs on the calling thread.
    The loop costs nothing measurable at the sizes here (a few to tens of small layers).
    Not for reverse-mode autodiff: nothing in gflow differentiates through these."""
    return jax.custom_batching.sequential_vmap(fn)


eigh = _one_matrix_per_call(lambda a: tuple(jnp.linalg.eigh(a)))
"""(eigenvalues ascending, eigenvectors) of a symmetric matrix."""
eigvalsh = _one_matrix_per_call(lambda a: jnp.linalg.eigvalsh(a))
"""Eigenvalues (ascending) of a symmetric matrix."""
svdvals = _one_matrix_per_call(lambda a: jnp.linalg.svd(a, compute_uv=False))
"""Singular values (descending) of a matrix."""
solve = _one_matrix_per_call(lambda a, b: jnp.linalg.solve(a, b))
"""x with a x = b (LU with pivoting)."""


def hvp(f: Callable, x: Float[Array, " P"], v: Float[Array, " P"]) -> Float[Array, " P"]:
    """Hessian-vector product ∇²f(x) v (forward-over-reverse)."""
    return jax.jvp(jax.grad(f), (x,), (v,))[1]


def lanczos_ritz_values(
    matvec: Callable[[Array], Array], dim: int, steps: int = 40, key=_START_KEY
) -> Float[Array, " m"]:
    """Ritz values (ascending) of a symmetric operator after `min(steps, dim)` Lanczos steps
    from a fixed pseudo-random start vector: results are deterministic. See
    [`block_lanczos`][] for the algorithm."""
    start = jax.random.normal(key, (1, dim), jnp.float64)
    return block_lanczos(matvec, start, steps)[0]


def block_lanczos(matvec: Callable[[Array], Array], start: Float[Array, "b P"], steps: int):
    """Ritz pairs of a symmetric operator on the block Krylov space of `start` (b columns,
    `steps` blocks, at most P vectors): (values ascending, vectors as rows).

    The basis is built one vector at a time (band Lanczos): vector j is the j-th start
    column for j < b, else the product of vector j − b, in both cases orthogonalized
    twice (Gram–Schmidt) against every earlier one. A block of b ≥ the multiplicity of
    an eigenvalue finds every copy, which a single start vector cannot. The Ritz pairs
    come from the projected matrix VᵀHV formed from the stored products HV, so they
    stay inside the true spectrum even where plain Lanczos would lose orthogonality.
    When the Krylov space is exhausted early (an invariant subspace), the basis is
    continued with a fresh pseudo-random direction ([`fresh_direction`][]) instead of
    dividing by ~0.
    """
    b, dim = start.shape
    m = min(b * int(steps), int(dim))

    def body(j, carry):
        V, HV = carry
        source = jnp.where(j < b, start[jnp.minimum(j, b - 1)], HV[jnp.maximum(j - b, 0)])
        scale = jnp.linalg.norm(source) + jnp.finfo(start.dtype).tiny
        v = _next_vector(_orthogonalize(V, source)[0], scale, V, j)
        return V.at[j].set(v), HV.at[j].set(matvec(v))

    V = jnp.zeros((m, dim), start.dtype)
    V, HV = jax.lax.fori_loop(0, m, body, (V, V))
    T = V @ HV.T
    values, S = eigh((T + T.T) / 2)
    return values, S.T @ V


def top_eigenpairs(matvec: Callable[[Array], Array], start: Float[Array, "k P"], steps: int):
    """The k = len(start) largest algebraic eigenvalues (descending) and their unit
    eigenvectors (rows) of a symmetric operator, by [`block_lanczos`][] from `start`
    (a warm start: the eigenvectors of a nearby operator, or random rows)."""
    values, vectors = block_lanczos(matvec, start, steps)
    k = start.shape[0]
    return values[::-1][:k], vectors[::-1][:k]


def top_hessian_eigenpairs(f: Callable, x: Float[Array, " P"], start: Float[Array, "k P"], steps: int):
    """[`top_eigenpairs`][] of ∇²f(x) from Hessian-vector products (one linearization)."""
    _, lin = jax.linearize(jax.grad(f), x)
    return top_eigenpairs(lin, start, steps)


SKIP_ZERO_ROWS_FROM = 2**20
"""Bytes of a Lanczos basis from which [`lanczos_top`][] reorthogonalizes against its rows in
use only (measured: no gain at P = 4,755 and 8 rows, 0.3 MB; 1.5× at P = 47,550, 3 MB)."""


def _orthogonalize(V, w, rows=None):
    """(w less its projection on the span of the rows of V, computed twice (classical
    Gram–Schmidt); the coefficients removed). x @ V rather than Vᵀx: no transposed copy of V.

    With `rows` (traced), the rows of V from `rows` on are known to be zero: when V is
    larger than a core's cache (`SKIP_ZERO_ROWS_FROM` bytes), they are not read, only the
    first 2, 4, 8, … (the next power of two, at most all of them). There each pass over V is
    memory-bound: at P = 47,550 and 8 rows one pass took 0.23 ms, a Hessian-vector product
    ~1 ms, and Lanczos's cost per product fell from 1.9 to 1.3 ms. On a small V the switch
    costs more than it saves."""

    def cgs2(V):
        x = V @ w
        u = w - x @ V
        y = V @ u
        return u - y @ V, x + y

    if rows is None or V.size * V.dtype.itemsize < SKIP_ZERO_ROWS_FROM:
        return cgs2(V)
    m = V.shape[0]
    sizes = sorted({min(2**i, m) for i in range(1, m.bit_length() + 1)})

    def first(size):
        def branch(V):
            u, x = cgs2(V[:size])
            return u, jnp.pad(x, (0, m - size))
        return branch

    index = jnp.searchsorted(jnp.asarray(sizes), rows)
    return jax.lax.switch(index, [first(size) for size in sizes], V)


def _ritz(j, T, Q, radius, b: int, c: int):
    """(Ritz values descending, their coordinate vectors, the error estimates of the b
    wanted, the spectral radius seen) after j products of [`lanczos_top`][], examining c
    pairs (see its stopping rule)."""
    m, dtype = T.shape[0], T.dtype
    tiny = jnp.finfo(dtype).tiny
    # eigh of the projected matrix on the j vectors so far: the unused rows and columns
    # of T are zero, and a diagonal below the whole spectrum sends them to the bottom.
    pad = 2 * jnp.sqrt(jnp.sum(T * T)) + tiny
    theta, S = eigh(T - jnp.diag(jnp.where(jnp.arange(m) < j, 0.0, pad)))
    radius = jnp.maximum(radius, jnp.maximum(jnp.abs(theta[-1]), jnp.abs(theta[m - j])))
    theta, S = theta[::-1], S[:, ::-1]
    last = jax.lax.dynamic_slice_in_dim(S[:, :c], jnp.maximum(j - b, 0), b, axis=0)  # s_l, last b vectors
    r = jnp.linalg.norm(last.T @ Q, axis=1)
    th = theta[:c]
    lower = jnp.concatenate([jnp.array([jnp.inf], dtype), th[:-1] - r[:-1]])  # eigenvalue above, at least
    upper = jnp.concatenate([th[1:] + r[1:], jnp.array([-jnp.inf], dtype)])  # eigenvalue below, at most
    gap = jnp.minimum(lower - th, th - upper)
    apart = gap > r
    err = jnp.where(apart, r * r / jnp.where(apart, gap, 1.0), r)[:b]
    if c > b:  # the first pair not wanted must be apart from the last one wanted
        err = err.at[b - 1].set(jnp.where(apart[b - 1], err[b - 1], jnp.inf))
    return theta, S, err, radius


def _next_vector(q, q_scale, V, n):
    """The next basis vector of an eigensolver: the pending direction q normalized or,
    when it has vanished against `q_scale` (an exhausted Krylov space), the n-th
    [`fresh_direction`][] orthogonalized against the basis."""

    def fresh(_):
        return _orthogonalize(V, fresh_direction(q.shape[0], n, q.dtype))[0]

    q = jax.lax.cond(jnp.linalg.norm(q) <= 1e-10 * q_scale, fresh, lambda _: q, None)
    return q / jnp.linalg.norm(q)


def _thick_restart(j, T, Q, radius, V, b: int, c: int, keep: int, _=None):
    """(basis, projected matrix) after a thick restart of [`lanczos_top`][]: the top `keep`
    Ritz vectors, with their Ritz values on the diagonal."""
    theta, S, _, _ = _ritz(j, T, Q, radius, b, c)
    V_kept = jnp.zeros_like(V).at[:keep].set(S[:, :keep].T @ V)
    return V_kept, jnp.zeros_like(T).at[jnp.arange(keep), jnp.arange(keep)].set(theta[:keep])


class Eigenpairs(NamedTuple):
    """The top of a symmetric operator's spectrum, from [`lanczos_top`][]."""

    values: Float[Array, " k"]
    """The k largest algebraic Ritz values, descending."""
    vectors: Float[Array, "k P"]
    """Their unit Ritz vectors (rows): the warm start of the next, nearby operator."""
    errors: Float[Array, " k"]
    """Estimated error of each value: min(‖r‖, ‖r‖²/gap), r = Hy − θy its residual and gap
    its distance to the neighbouring Ritz values less their residuals."""
    products: Int[Array, ""]
    """Operator products used."""


LANCZOS_TOL = 1e-12
"""Default stopping rule of [`lanczos_top`][]: the estimated error of every eigenvalue
wanted is at most this times the spectral radius of the projected operator."""

def lanczos_top(
    matvec: Callable[[Array], Array],
    start: Float[Array, "k P"],
    max_products: int = 40,
    tol: float = LANCZOS_TOL,
    basis: int | None = None,
) -> Eigenpairs:
    """The k = len(start) largest algebraic eigenpairs of a symmetric operator, by
    thick-restart band Lanczos with full reorthogonalization from the rows of `start`,
    stopped as soon as the k values have converged or after `max_products` products.

    **Arguments:**

    - `matvec`: v ↦ Hv (H symmetric, e.g. a linearized gradient: Hessian-vector products).
    - `start`: k rows spanning the start block: random ([`start_vectors`][]) or a warm
      start ([`warm_start`][]).
    - `max_products`: cap on products; the result is then the best found so far.
    - `tol`: the stopping rule below, relative to the spectral radius of what was seen.
    - `basis`: vectors held at once (default max(8, 6k); at least k + 1). A thick restart
      loses some convergence: at k = 5 on a 130-parameter Hessian with a 5% gap after the
      5th value, 15 vectors needed 204 products, 30 needed 110, 40 needed 73.

    The stopping rule, the warm start and the algorithm: see the module docstring.
    """
    b, dim = start.shape
    m = min(int(basis or max(8, 6 * b)), int(dim))
    if m < min(b + 1, dim):
        raise ValueError(f"the basis must hold at least k + 1 = {b + 1} vectors (k eigenpairs wanted); got {basis}.")
    keep = max(b + 1, m // 2) if m > b + 1 else b  # Ritz vectors kept at a restart
    c = min(b + 1, m)  # Ritz pairs examined: the k wanted and the next (for the gap)
    dtype = start.dtype
    tiny = jnp.finfo(dtype).tiny

    def product(carry):
        n, j, base, V, T, Q, qn, radius, _ = carry
        v = _next_vector(Q[0], qn[0], V, n)
        V = V.at[j].set(v)
        rest = Q[1:] - jnp.outer(Q[1:] @ v, v)
        h = matvec(v)
        f, col = _orthogonalize(V, h, j + 1)
        T = T.at[:, j].set(col).at[j, :].set(col)
        Q = jnp.concatenate([rest, f[None]])
        qn = jnp.concatenate([qn[1:], jnp.linalg.norm(h)[None] + tiny])
        j, n = j + 1, n + 1
        _, _, err, radius = _ritz(j, T, Q, radius, b, c)
        # k + 1 Ritz pairs, of which the last k vectors are new (after a restart)
        converged = (j >= c) & (j - base >= b) & (c > b) & jnp.all(err <= tol * radius)
        return n, j, base, V, T, Q, qn, radius, converged | (j >= dim)

    def cycle(carry):
        carry = jax.lax.while_loop(lambda c: (c[1] < m) & (c[0] < max_products) & ~c[-1], product, carry)
        n, j, base, V, T, Q, qn, radius, done = carry
        last = done | (n >= max_products)

        restart = functools.partial(_thick_restart, j, T, Q, radius, V, b, c, keep)
        V, T = jax.lax.cond(last, lambda _: (V, T), restart, None)
        j = jnp.where(last, j, keep)
        return n, j, j, V, T, Q, qn, radius, done

    qn = jnp.linalg.norm(start, axis=1) + tiny
    zero = jnp.array(0)
    init = (zero, zero, zero, jnp.zeros((m, dim), dtype), jnp.zeros((m, m), dtype), start, qn,
            jnp.zeros((), dtype), jnp.array(False))
    n, j, _, V, T, Q, _, radius, _ = jax.lax.while_loop(lambda c: (c[0] < max_products) & ~c[-1], cycle, init)
    theta, S, err, _ = _ritz(j, T, Q, radius, b, c)
    return Eigenpairs(theta[:b], S[:, :b].T @ V, err, n)


@functools.lru_cache(maxsize=16)
def start_vectors(k: int, dim: int, seed: int = 20240513) -> np.ndarray:
    """k fixed pseudo-random unit vectors of R^dim (rows): the cold start of [`lanczos_top`][]
    (and, with `FRESH_SEED`, the base of [`fresh_direction`][]). Drawn by NumPy once and
    embedded in the compiled program as a constant, so a solve does not draw them again at
    every save (a Gaussian draw of 47,550 numbers costs more than a Hessian-vector product
    at that size)."""
    noise = np.random.default_rng(seed).standard_normal((k, dim))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    noise.flags.writeable = False
    return noise


FRESH_SEED = 20241126
"""Seed of the vector whose shifts are the [`fresh_direction`][]s (not the start's)."""


def fresh_direction(dim: int, n, dtype) -> Float[Array, " P"]:
    """The n-th direction (n traced) that continues an exhausted Krylov space: a fixed
    pseudo-random vector drawn by NumPy (a constant of the program), shifted cyclically by
    n. The shifts of a Gaussian vector are linearly independent (almost surely), and a
    shift is a copy, where a Gaussian draw inside the loop (threefry and an inverse error
    function) was compiled at every place the eigensolver is inlined: the central flow's
    optimized program fell from 18,908 to 14,746 instructions (docs/design.md)."""
    return jnp.roll(jnp.asarray(start_vectors(1, dim, FRESH_SEED)[0], dtype), n)


def warm_start(previous: Float[Array, "k P"], mix: float = 1e-3) -> Float[Array, "k P"]:
    """The start block of [`lanczos_top`][] from `previous` (unit rows: the top eigenvectors
    at the last save), each row with `mix` of a fixed pseudo-random unit vector
    ([`start_vectors`][]) added, so that no eigenvector is missing from the block: a warm
    start exactly orthogonal to the new top eigenvector (a crossing) would never find it.
    Rows of NaN (no previous save) give the pseudo-random vectors themselves: a cold start."""
    noise = jnp.asarray(start_vectors(*previous.shape), previous.dtype)
    ok = jnp.all(jnp.isfinite(previous), axis=1, keepdims=True)
    return jnp.where(ok, previous + mix * noise, noise)


def third_derivative(f: Callable, x: Float[Array, " P"], u: Float[Array, " P"], v: Float[Array, " P"]):
    """∇³f(x)[u, v, ·] = ∇_x⟨u, ∇²f(x) v⟩ as a vector, by a jvp of the Hessian-vector
    product (forward over forward over reverse)."""
    return jax.jvp(lambda y: hvp(f, y, v), (x,), (u,))[1]


def top_hessian_eigenvalue(
    f: Callable, x: Float[Array, " P"], steps: int = 40, tol: float = LANCZOS_TOL
) -> Float[Array, ""]:
    """Largest algebraic eigenvalue of ∇²f(x): [`lanczos_top`][] on Hessian-vector products
    from a fixed pseudo-random start (deterministic), at most `steps` products."""
    _, lin = jax.linearize(jax.grad(f), x)  # one linearization, reused by every product
    return lanczos_top(lin, jnp.asarray(start_vectors(1, x.shape[0]), x.dtype), steps, tol).values[0]


def dense_hessian(f: Callable, x: Float[Array, " P"]) -> Float[Array, "P P"]:
    """The full Hessian ∇²f(x) (for checks and small models: cost grows like P²), as one
    compiled program: run eagerly, `jax.hessian` is ~20 small programs and a `lax.scan`
    compiled anew at every call (paper MLP, tests' build: 1.2–1.8 s a call against 0.3 s)."""
    return jax.jit(lambda y: _symmetric(jax.hessian(f)(y)))(x)


def _symmetric(H):
    return (H + H.T) / 2


def top_singular_triplet(W: Float[Array, "m n"]):
    """(σ_1, u_1, v_1) of W: top singular value with its left and right vectors.

    From the top eigenvector of the smaller Gram matrix (WᵀW or WWᵀ, of W scaled to
    entries ≤ 1 so that nothing under- or overflows), the other vector and σ_1 = ‖W v_1‖
    by one product: as accurate as an SVD for the top triplet (σ_1 to round-off, the vectors
    to round-off over the relative gap σ_1² − σ_2²), and faster: LAPACK's default SVD
    (gesdd) took 21 ms for one 50 × 50 layer here, the Gram eigendecomposition 0.3 ms.
    """
    m, n = W.shape
    scale = jnp.max(jnp.abs(W))
    Ws = W / jnp.where(scale > 0, scale, 1.0)
    if n <= m:
        v = eigh(Ws.T @ Ws)[1][:, -1]
        u = W @ v
        s = jnp.linalg.norm(u)
        return s, jnp.where(s > 0, u / jnp.where(s > 0, s, 1.0), jnp.eye(m, dtype=W.dtype)[0]), v
    u = eigh(Ws @ Ws.T)[1][:, -1]
    v = W.T @ u
    s = jnp.linalg.norm(v)
    return s, u, jnp.where(s > 0, v / jnp.where(s > 0, s, 1.0), jnp.eye(n, dtype=W.dtype)[0])


def rank_one_residual(W: Float[Array, "m n"]) -> Float[Array, ""]:
    """‖W − σ₁u₁v₁ᵀ‖_F² = σ₂² + σ₃² + ⋯, the squared distance of W to rank one.

    Formed as a norm, not as ‖W‖_F² − σ₁² (which cancels when W is nearly rank one). With
    the triplet of [`top_singular_triplet`][], σ₁u₁ = Wv₁, so this is ‖W(I − v₁v₁ᵀ)‖_F²: an
    error δ in v₁ adds (σ₁² − σ₂²)δ², and δ ≲ ε σ₁²/(σ₁² − σ₂²), so the value is exact to
    ~ε²σ₁⁴/(σ₁² − σ₂²) plus rounding ~ε²σ₁² — the accuracy of squaring an SVD's σ₂, σ₃, ….
    A degenerate top value (σ₁ = σ₂) is no exception: every unit v₁ of its space is exact.
    A row or a column has rank ≤ 1 by its shape: exactly 0, as an SVD's empty tail gives."""
    if min(W.shape) <= 1:
        return jnp.zeros((), W.dtype)
    s, u, v = top_singular_triplet(W)
    return jnp.sum((W - s * jnp.outer(u, v)) ** 2)

