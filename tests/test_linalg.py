import re
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow import complementarity, linalg, models, observables, problem


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
    assert top == pytest.approx(eigs[-1], rel=1e-10)


def test_lanczos_matches_dense_hessian_residual():
    prob = problem.gaussian(40, 6, seed=1)
    model = models.residual(jax.random.key(1), 6, 8, 0.5)
    eigs, top = _dense_and_lanczos(model, prob)
    assert top == pytest.approx(eigs[-1], rel=1e-10)


def test_lanczos_returns_largest_algebraic_not_largest_modulus():
    # A saddle-like point: the most negative eigenvalue is larger in modulus than the top one.
    prob = problem.gaussian(50, 5, seed=0, unit_pi_star=False)
    model = models.mlp(jax.random.key(1), models.mlp_widths(5, 6, 5), 0.2)
    eigs, top = _dense_and_lanczos(model, prob)
    assert -eigs[0] > 1.2 * eigs[-1] > 0  # the case is what it claims to be
    assert top == pytest.approx(eigs[-1], rel=1e-10)


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
    # from u, an eigenvector, the Krylov space has dimension 1: eleven of the twelve vectors
    # are fresh directions, and the basis stays orthonormal
    _, vectors = linalg.block_lanczos(lambda v: A @ v, jnp.asarray(u)[None], 12)
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(12), atol=1e-12)


@pytest.mark.parametrize("dim, count", [(7, 7), (30, 12), (1000, 40)])
def test_fresh_directions_are_fixed_and_independent(dim, count):
    """The directions that continue an exhausted Krylov space: the same in every call (a
    deterministic eigensolver), and as many independent ones as a basis can need (the
    smallest singular value of the unit rows is measured 0.098 at dim 7, ≥ 0.39 above)."""
    rows = np.stack([np.asarray(linalg.fresh_direction(dim, n, jnp.float64)) for n in range(count)])
    np.testing.assert_array_equal(rows, np.stack([np.asarray(linalg.fresh_direction(dim, n, jnp.float64))
                                                  for n in range(count)]))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    assert np.linalg.svd(rows, compute_uv=False).min() > 0.05


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


# --- top eigenpairs and third derivatives (the central flow, theory.md §8) ---------------------


def test_block_lanczos_finds_every_copy_of_a_repeated_top_eigenvalue():
    # eigenvalues 5, 5, 3, then 20 values in [0, 1): a single start vector sees one 5 only
    rng = np.random.default_rng(1)
    Q = np.linalg.qr(rng.standard_normal((23, 23)))[0]
    values = np.concatenate([[5.0, 5.0, 3.0], rng.uniform(0, 1, 20)])
    A = jnp.asarray(Q @ np.diag(values) @ Q.T)
    single = linalg.lanczos_ritz_values(lambda v: A @ v, 23, steps=15)
    assert np.sum(np.abs(np.asarray(single) - 5.0) < 1e-6) == 1
    start = jax.random.normal(jax.random.key(0), (3, 23))
    top, vectors = linalg.top_eigenpairs(lambda v: A @ v, start, steps=7)  # 21 of 23 dimensions
    np.testing.assert_allclose(top, [5.0, 5.0, 3.0], rtol=1e-10)
    np.testing.assert_allclose(vectors @ np.asarray(A), np.asarray(top)[:, None] * vectors, atol=1e-5)
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(3), atol=1e-12)


@pytest.mark.parametrize("scale, seed", [(0.35, 0), (0.6, 1)])
def test_top_hessian_eigenpairs_match_the_dense_hessian(paper_problem, scale, seed):
    model = models.mlp(jax.random.key(seed), models.mlp_widths(5, 10, 5), scale)
    f, x = observables.flat_risk(model, paper_problem)
    H = np.asarray(linalg.dense_hessian(f, x))
    eigs = np.linalg.eigvalsh(H)[::-1][:3]
    start = jax.random.normal(jax.random.key(2), (3, x.size))
    top, vectors = linalg.top_hessian_eigenpairs(f, x, start, 15)
    np.testing.assert_allclose(top, eigs, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(vectors) @ H, eigs[:, None] * np.asarray(vectors), atol=1e-8 * eigs[0])


def test_third_derivative_matches_differences_of_the_dense_hessian():
    """∇³f[u, v, ·] against (∇²f(x + εu) − ∇²f(x − εu))v/(2ε), dense Hessians (no third-order AD)."""
    prob = problem.gaussian(20, 3, seed=2)
    model = models.mlp(jax.random.key(3), models.mlp_widths(3, 3, 3), 0.7)
    f, x = observables.flat_risk(model, prob)
    u, v = jax.random.normal(jax.random.key(4), (2, x.size))
    eps = 1e-4
    fd = (linalg.dense_hessian(f, x + eps * u) - linalg.dense_hessian(f, x - eps * u)) @ v / (2 * eps)
    got = linalg.third_derivative(f, x, u, v)
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-8 * float(jnp.abs(fd).max()))
    np.testing.assert_allclose(got, linalg.third_derivative(f, x, v, u), rtol=1e-10, atol=1e-12)  # symmetric


# --- Lanczos stopped at convergence, warm starts (issue 14) ------------------------------------


def _spectrum(values, seed=0):
    """A symmetric matrix with the given eigenvalues and random eigenvectors (columns of Q)."""
    Q = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(values), len(values))))[0]
    return jnp.asarray(Q @ np.diag(values) @ Q.T), Q


def test_lanczos_top_estimates_bound_the_error_and_stop_early():
    values = np.concatenate([[4.0, 3.0], np.random.default_rng(1).uniform(-3.5, 2.5, 98)])
    A, _ = _spectrum(values)
    start = jax.random.normal(jax.random.key(0), (1, 100))
    pairs = linalg.lanczos_top(lambda v: A @ v, start, 100)
    assert int(pairs.products) < 40  # stopped at convergence, well before the cap
    assert float(pairs.values[0]) == pytest.approx(4.0, rel=1e-12)
    assert abs(float(pairs.values[0]) - 4.0) <= 10 * float(pairs.errors[0]) + 1e-15
    assert float(pairs.errors[0]) <= linalg.LANCZOS_TOL * 4.0
    v = np.asarray(pairs.vectors[0])
    np.testing.assert_allclose(np.asarray(A) @ v, 4.0 * v, atol=1e-5)


def test_lanczos_top_warm_start_from_a_nearby_operator_is_cheaper():
    A, Q = _spectrum(np.concatenate([[5.0, 3.0], np.random.default_rng(2).uniform(-4.0, 2.5, 78)]))
    B = np.random.default_rng(3).standard_normal((80, 80))
    A2 = A + 1e-4 * jnp.asarray(B + B.T)
    exact = np.linalg.eigvalsh(np.asarray(A2))[-1]
    cold = linalg.lanczos_top(lambda v: A2 @ v, jax.random.normal(jax.random.key(0), (1, 80)), 80)
    warm = linalg.lanczos_top(lambda v: A2 @ v, linalg.warm_start(jnp.asarray(Q[:, :1].T)), 80)
    for pairs in (cold, warm):
        assert float(pairs.values[0]) == pytest.approx(exact, rel=1e-12)
    # Lanczos shrinks tan∠(v, top eigenvector) by about ρ = 1/(1 + 2γ + 2√(γ + γ²)) per
    # product (Chebyshev; γ = the gap over the rest of the spectrum's width): a start closer
    # by a factor F saves about log F / log(1/ρ) products (9.2 here). Ask for half of that.
    w, U = np.linalg.eigh(np.asarray(A2))
    gamma = (w[-1] - w[-2]) / (w[-2] - w[0])
    rho = 1 / (1 + 2 * gamma + 2 * np.sqrt(gamma + gamma**2))

    def tan(start):
        c = abs(float(np.asarray(start)[0] @ U[:, -1])) / float(np.linalg.norm(start))
        return np.sqrt(1 - c * c) / c

    cold_start = jax.random.normal(jax.random.key(0), (1, 80))
    saving = np.log(tan(cold_start) / tan(linalg.warm_start(jnp.asarray(Q[:, :1].T)))) / np.log(1 / rho)
    assert saving > 8
    assert int(cold.products) - int(warm.products) >= saving / 2


def test_lanczos_top_finds_a_top_eigenvalue_its_warm_start_is_orthogonal_to():
    # The eigenvalues crossed: the warm start is exactly the eigenvector of the second one.
    A, Q = _spectrum(np.concatenate([[3.0, 2.0], np.random.default_rng(4).uniform(-2.5, 1.5, 58)]))
    pairs = linalg.lanczos_top(lambda v: A @ v, linalg.warm_start(jnp.asarray(Q[:, 1:2].T)), 60)
    assert float(pairs.values[0]) == pytest.approx(3.0, rel=1e-12)
    # no previous vector (NaN rows): the fixed random start
    cold = linalg.warm_start(jnp.full((2, 60), jnp.nan))
    assert np.all(np.isfinite(cold)) and np.allclose(np.linalg.norm(cold, axis=1), 1.0)


def test_lanczos_top_restarts_when_the_basis_is_full():
    # a small relative gap at the top: many more products than the 8-vector basis holds
    values = np.concatenate([[1.0, 0.97], np.linspace(-1.0, 0.95, 198)])
    A, _ = _spectrum(values, seed=5)
    pairs = linalg.lanczos_top(lambda v: A @ v, jax.random.normal(jax.random.key(1), (1, 200)), 400, basis=8)
    assert 8 < int(pairs.products) < 400
    assert float(pairs.values[0]) == pytest.approx(1.0, rel=1e-11)


@pytest.mark.parametrize("k", [1, 2])
def test_lanczos_top_on_a_basis_past_the_cache_reads_only_its_rows_in_use(k, monkeypatch):
    """A basis of ≥ `SKIP_ZERO_ROWS_FROM` bytes is reorthogonalized against its rows in use
    only: through restarts and with a block, the same eigenpairs as against every row."""
    dim = 20_000  # 8 or 12 rows: 1.3 or 1.9 MB
    d = jnp.asarray(np.concatenate([[1.0, 0.97, 0.9], np.random.default_rng(7).uniform(-1.0, 0.85, dim - 3)]))
    start = jnp.asarray(linalg.start_vectors(k, dim))
    assert 8 * max(8, 6 * k) * dim >= linalg.SKIP_ZERO_ROWS_FROM

    def run():
        return jax.jit(lambda s: linalg.lanczos_top(lambda v: d * v, s, 400))(start)

    rows_in_use = run()
    monkeypatch.setattr(linalg, "SKIP_ZERO_ROWS_FROM", np.inf)
    every_row = run()
    assert int(rows_in_use.products) > max(8, 6 * k)  # it restarted
    np.testing.assert_allclose(rows_in_use.values, [1.0, 0.97][:k], rtol=1e-11)
    np.testing.assert_allclose(rows_in_use.values, every_row.values, rtol=1e-13)
    assert abs(int(rows_in_use.products) - int(every_row.products)) <= 2


def test_lanczos_top_block_finds_every_copy_and_stops_on_an_exhausted_space():
    rng = np.random.default_rng(1)
    A, _ = _spectrum(np.concatenate([[5.0, 5.0, 3.0], rng.uniform(0, 1, 20)]), seed=6)
    pairs = linalg.lanczos_top(lambda v: A @ v, jax.random.normal(jax.random.key(0), (3, 23)), 200)
    np.testing.assert_allclose(pairs.values, [5.0, 5.0, 3.0], rtol=1e-11)
    np.testing.assert_allclose(pairs.vectors @ pairs.vectors.T, np.eye(3), atol=1e-10)
    # identity plus a rank-one term: a Krylov space of dimension 2
    u = jnp.arange(1.0, 31.0) / 30
    B = jnp.eye(30) + 3.0 * jnp.outer(u, u) / (u @ u)
    pairs = linalg.lanczos_top(lambda v: B @ v, jax.random.normal(jax.random.key(2), (1, 30)), 30)
    assert np.all(np.isfinite(pairs.values)) and float(pairs.values[0]) == pytest.approx(4.0, rel=1e-12)
    # more vectors wanted than dimensions: the whole space, exactly
    C = jnp.asarray(np.diag([2.0, -1.0]))
    pairs = linalg.lanczos_top(lambda v: C @ v, jax.random.normal(jax.random.key(3), (2, 2)), 10)
    np.testing.assert_allclose(pairs.values, [2.0, -1.0], rtol=1e-12)


def test_top_singular_triplet_of_a_wide_layer():
    W = np.random.default_rng(1).standard_normal((50, 50))
    s, u, v = linalg.top_singular_triplet(jnp.asarray(W))
    assert float(s) == pytest.approx(np.linalg.norm(W, 2), rel=1e-12)
    np.testing.assert_allclose(W @ np.asarray(v), float(s) * np.asarray(u), atol=1e-11)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
@pytest.mark.parametrize("sigma", [(3.0, 1e-5, 2e-7, 0.0), (2.0, 2.0, 1e-3, 0.0)], ids=["near_rank_one", "degenerate"])
def test_rank_one_residual_is_the_tail_of_the_singular_values(shape, sigma):
    """‖W − σ₁u₁v₁ᵀ‖_F² = σ₂² + σ₃² + ⋯ to the accuracy of an SVD's tail, where the
    difference ‖W‖_F² − σ₁² loses everything to cancellation. The reference is LAPACK's SVD
    of the stored W: its σ₂ = 1e-5 is exact to ~ε σ₁ = 7e-16, i.e. 1.4e-10 relative on σ₂²."""
    rng = np.random.default_rng(3)
    U = np.linalg.qr(rng.standard_normal((shape[0], shape[0])))[0][:, :4]
    V = np.linalg.qr(rng.standard_normal((shape[1], shape[1])))[0][:, :4]
    W = (U * np.asarray(sigma)) @ V.T
    tail = np.sum(np.linalg.svd(W, compute_uv=False)[1:] ** 2)
    got = float(linalg.rank_one_residual(jnp.asarray(W)))
    assert got == pytest.approx(tail, rel=1e-9)
    if sigma[1] < 1e-3:  # the cancelling form is far off: the check above can fail
        naive = np.sum(W**2) - np.linalg.norm(W, 2) ** 2
        assert abs(naive - tail) > 1e-7 * tail
    assert float(linalg.rank_one_residual(jnp.asarray(W[:1]))) == 0.0  # a row has rank one


def _lapack_operands(fn, *args) -> list[tuple[str, tuple[int, ...]]]:
    """(kernel, shape of its first operand) of every LAPACK call in fn's CPU program."""
    text = jax.jit(fn).lower(*args).as_text()
    calls = re.findall(r"custom_call @(lapack_\w+)\(.*?\) .*?: \(tensor<([0-9x]+)x?f64>", text)
    return [(name, tuple(int(n) for n in dims.split("x") if n)) for name, dims in calls]


def test_a_planted_batched_lapack_call_is_seen():
    eigs = _lapack_operands(jax.vmap(jnp.linalg.eigh), jnp.ones((3, 4, 4)))
    assert eigs == [("lapack_dsyevd_ffi", (3, 4, 4))]


def test_every_lapack_call_takes_one_matrix_even_under_vmap():
    """jaxlib 0.10 spreads a batched CPU LAPACK call over XLA's thread pool and blocks on it,
    which can deadlock a 2-core machine (docs/design.md, "A hang in XLA:CPU"): under `vmap`
    (sweeps, GD grids), each of gflow's calls must still get one matrix."""
    prob = problem.gaussian(20, 5, seed=0)
    model = models.mlp(jax.random.key(7), [5, 5, 5, 5, 3, 3, 1], 0.6)
    params, static = eqx.partition(model, eqx.is_array)
    stacked = jax.tree.map(lambda w: jnp.stack([w, 1.1 * w]), params)
    names = (*observables.defaults(model), "partial_product_extremes", "top_eigenvalues")

    def everything(params):
        m = eqx.combine(params, static)
        values = [o(m, prob, m) for o in observables.get(names)]
        f, x = observables.flat_risk(m, prob)
        values.append(linalg.eigvalsh(linalg.dense_hessian(f, x)))
        F, X, active = jnp.eye(6) + x[:36].reshape(6, 6), jnp.diag(x[:3]), x[:3] > 0  # k = 3 eigenvalues
        values += [complementarity.equality_solution(F, x[:6], active),
                   complementarity.smallest_active_eigenvalue(X, active)]
        return values

    calls = _lapack_operands(jax.vmap(everything), stacked)
    assert {name for name, _ in calls} >= {"lapack_dsyevd_ffi", "lapack_dgesdd_ffi", "lapack_dgetrf_ffi"}
    assert all(len(shape) == 2 for _, shape in calls), calls


def test_lapack_is_called_through_linalg_only():
    """The decompositions and solves of `jnp.linalg` (all but `norm`) appear in gflow/linalg.py
    only, where their `vmap` is a loop (the test above)."""
    pattern = re.compile(r"jnp\.linalg\.(?!norm\b)\w+|jax\.scipy\.linalg|lax\.linalg")
    root = Path(gflow.__file__).parent
    found = [f"{p.relative_to(root)}: {m.group()}" for p in sorted(root.rglob("*.py")) if p.name != "linalg.py"
             for m in pattern.finditer(p.read_text(encoding="utf-8"))]
    assert found == []
    assert pattern.search("x = jnp.linalg.svd(w)") and not pattern.search("jnp.linalg.norm(w)")
