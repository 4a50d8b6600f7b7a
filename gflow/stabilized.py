"""A stabilized explicit solver for stiff gradient flows: the damped second-order
Runge–Kutta–Chebyshev method, RKC2 (van der Houwen & Sommeijer 1980; Sommeijer, Shampine &
Verwer 1998, the method of their code `rkc.f`).

An explicit Runge–Kutta method is stable on the gradient flow near W only for steps with
h·S(W) ≲ 3 (S the sharpness, docs/theory.md §6), so a flow that stays sharp for a long time
costs ~t·S/3 steps however smooth it is. The Jacobian of gradient flow is −∇²R: symmetric,
with a real spectrum in [−S, |λ_min|]. An s-stage RKC step is stable on the real interval
[−β(s), 0] with β(s) ≈ 0.65 s², so a step of size h needs s ≈ √(1.54 h ρ) stages (ρ the
spectral radius): the cost of crossing a time t falls from ~t·S/3 to ~t·√(1.54 S/h)
evaluations, with h chosen by accuracy alone. The method is second order; its error
estimate is Sommeijer et al.'s (O(h³), from y₀, y₁ and the field at both ends, which the
next step reuses), and its dense output is cubic Hermite.

ρ is estimated at every step by power iteration on the Jacobian (a Jacobian-vector product
of the vector field, `jax.jvp`), continued from the previous step's vector and stopped once
the estimate moves by less than 1%: one product per step on a slowly varying flow. The
estimate, from below, is enlarged by 20% as `rkc.f` does; an under-estimate that makes a
step unstable shows in its error estimate and the step is rejected.

It suits a vector field whose Jacobian has a real (or nearly real) spectrum: gradient flow
and the modified flow (gradients of functions). A Jacobian with large imaginary
eigenvalues, which RKC's stability region does not cover, needs an implicit solver.
"""

from __future__ import annotations

from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from . import linalg
from .observables import squared_norm

DAMPING = 2.0 / 13.0
"""ε of the damped Chebyshev polynomials (w₀ = 1 + ε/s²): the stability function stays below 1
in modulus inside the interval (undamped, it touches 1 at each interior extremum), so the
region covers a narrow strip around the negative real axis, at the price of a slightly
shorter interval, β(s) ≈ 0.65 s² against 2(s² − 1)/3 undamped."""

SAFETY = 1.2
"""Factor on the power iteration's estimate of the spectral radius (from below)."""


class RKC2(diffrax.AbstractAdaptiveSolver):
    """Damped second-order Runge–Kutta–Chebyshev with as many stages per step as the
    step's stability needs (2 to `max_stages`). See the module's docstring.

    A step that would need more than `max_stages` stages returns an infinite error, so the
    controller rejects it and shrinks the step. Round-off grows like s²·u over a step
    (u = 2.2e-16), ~1e-11 at 200 stages: far below any tolerance gflow uses.
    """

    max_stages: int = eqx.field(static=True, default=200)
    power_iterations: int = eqx.field(static=True, default=20)

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms):
        return 2

    def error_order(self, terms):
        return 3  # the estimate is O(h³): the step-size factor is error^(−1/3), as in rkc.f

    def init(self, terms, t0, t1, y0, args):
        """(the field at y0, the power iteration's vector: Lanczos's fixed pseudo-random unit
        start, its last estimate of ρ)."""
        flat, unflatten = ravel_pytree(y0)
        v = unflatten(jnp.asarray(linalg.start_vectors(1, flat.size)[0], flat.dtype))
        return terms.vf(t0, y0, args), v, jnp.zeros((), flat.dtype)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        f0, v, rho = solver_state
        f0 = lax.cond(made_jump, lambda: terms.vf(t0, y0, args), lambda: f0) if made_jump is not False else f0
        v, rho = _spectral_radius(lambda u: jax.jvp(lambda y: terms.vf(t0, y, args), (y0,), (u,))[1],
                                  v, rho, self.power_iterations)
        h = terms.contr(t0, t1)
        needed = 1 + jnp.floor(jnp.sqrt(1 + 1.54 * jnp.abs(h) * SAFETY * rho))
        too_many = ~(needed <= self.max_stages)  # or not finite: the step is rejected, at 2 stages' cost
        stages = jnp.where(too_many, 2, jnp.maximum(needed, 2)).astype(jnp.int32)
        y1 = _chebyshev_step(lambda t, y: terms.vf(t, y, args), t0, y0, f0, h, stages)
        f1 = terms.vf(t1, y1, args)
        error = jax.tree.map(lambda a, b, fa, fb: 0.8 * (a - b) + 0.4 * h * (fa + fb), y0, y1, f0, f1)
        error = jax.tree.map(lambda e: jnp.where(too_many, jnp.inf, e), error)
        k = jax.tree.map(lambda fa, fb: jnp.stack([h * fa, h * fb]), f0, f1)
        return y1, error, dict(y0=y0, y1=y1, k=k), (f1, v, rho), diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


def _spectral_radius(jvp, v, rho, max_iterations: int):
    """Power iteration on the Jacobian from the unit vector `v`, until the estimate of
    ‖J‖ (the spectral radius of a symmetric J) moves by less than 1% from the last one
    (`rho`, the previous step's at the first iteration). Returns (vector, estimate)."""

    def unconverged(state):
        i, _, new, old = state
        return (i < max_iterations) & ((i == 0) | (jnp.abs(new - old) > 0.01 * new))

    def iterate(state):
        i, v, new, _ = state
        w = jvp(v)
        size = jnp.sqrt(squared_norm(w))
        v = jax.tree.map(lambda a, b: jnp.where(size > 0, a / jnp.where(size > 0, size, 1), b), w, v)
        return i + 1, v, size, new

    _, v, new, _ = lax.while_loop(unconverged, iterate, (0, v, rho, rho))
    return v, new


def _chebyshev_step(field, t0, y0, f0, h, stages):
    """Y_s of the damped RKC2 recurrence over `stages` stages (Sommeijer et al. 1998, eq. 2.4):

        Y₁ = Y₀ + μ̃₁ h F₀,
        Y_j = (1 − μ_j − ν_j) Y₀ + μ_j Y_{j−1} + ν_j Y_{j−2} + μ̃_j h F(Y_{j−1}) + γ̃_j h F₀,

    with T_j the Chebyshev polynomials at w₀ = 1 + ε/s², w₁ = T_s'(w₀)/T_s''(w₀),
    b_j = T_j''(w₀)/T_j'(w₀)² (b₀ = b₁ = b₂), μ_j = 2w₀ b_j/b_{j−1}, ν_j = −b_j/b_{j−2},
    μ̃_j = 2w₁ b_j/b_{j−1}, γ̃_j = −(1 − b_{j−1} T_{j−1}(w₀)) μ̃_j. Stage j sits at
    t₀ + c_j h, with c_j given by the same recurrence applied to t (c₁ = μ̃₁)."""
    dtype = jnp.result_type(h)
    s = stages.astype(dtype)
    w0 = 1 + DAMPING / s**2
    # w₁ in closed form from T_s(cosh θ) = cosh(sθ) (equal to the recurrences' to 1e-13 for s ≤ 200):
    # T_s' = s·sinh(sθ)/sinh θ, T_s'' = s·(s·cosh(sθ)·sinh θ − sinh(sθ)·cosh θ)/sinh³θ
    theta = jnp.arccosh(w0)
    w1 = jnp.sinh(s * theta) * jnp.sinh(theta) ** 2 / (s * jnp.cosh(s * theta) * jnp.sinh(theta)
                                                        - jnp.sinh(s * theta) * jnp.cosh(theta))
    b_first = 1 / (4 * w0**2)  # b₂ = T₂''/T₂'² = 4/(4w₀)²

    def body(j, state):
        (y1, y2, c1, c2), (t, d, e), (bm1, bm2) = state
        t_new, d_new, e_new = _next_chebyshev(w0, (t, d, e))
        b = e_new[0] / d_new[0] ** 2
        mu, nu, mu_t = 2 * w0 * b / bm1, -b / bm2, 2 * w1 * b / bm1
        gamma_t = -(1 - bm1 * t[0]) * mu_t
        f = field(t0 + c1 * h, y1)
        y = jax.tree.map(lambda a0, a1, a2, fa, fb: (1 - mu - nu) * a0 + mu * a1 + nu * a2 + mu_t * h * fa
                         + gamma_t * h * fb, y0, y1, y2, f, f0)
        c = mu * c1 + nu * c2 + mu_t + gamma_t
        return (y, y1, c, c1), (t_new, d_new, e_new), (b, bm1)

    mu_t1 = b_first * w1
    first = jax.tree.map(lambda a, fa: a + mu_t1 * h * fa, y0, f0)
    state = ((first, y0, mu_t1, jnp.zeros((), dtype)), _first_chebyshev(w0), (b_first, b_first))
    (y, *_), _, _ = lax.fori_loop(2, stages + 1, body, state)
    return y


def _first_chebyshev(w0):
    """(T₁, T₀), (T₁', T₀'), (T₁'', T₀'') at w₀."""
    one, zero = jnp.ones_like(w0), jnp.zeros_like(w0)
    return (w0, one), (one, zero), (zero, zero)


def _next_chebyshev(w0, previous):
    """One step of the three-term recurrences for T_j, T_j' and T_j'' at w₀."""
    (t1, t0), (d1, d0), (e1, e0) = previous
    return (2 * w0 * t1 - t0, t1), (2 * t1 + 2 * w0 * d1 - d0, d1), (4 * d1 + 2 * w0 * e1 - e0, e1)
