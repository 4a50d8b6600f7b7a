"""How much numerical slack each check allows, and where it comes from (theory.md §9).

A check's margin is bound − observed + tolerance (or observed − bound + tolerance), so a
tolerance is the part of a violation that solver error or round-off could explain. Two
kinds of derivation appear:

- *a-priori budgets*: the PID controller accepts a step only when its estimated local error
  is within atol + rtol·|y| per component, so a quantity that the exact flow conserves (D_k,
  R + E) or cannot increase (R) moves by at most a known amount per step; the budget of a
  save interval is that amount times the steps taken inside it;
- *measured*: statements that are algebra in a conserved quantity (the Lemma of §4) take the
  drift of that quantity as recorded along the run.
"""

from __future__ import annotations

import math

import numpy as np

SAFETY = 10.0
"""Factor between the controller's accepted local error and what a budget allows.

An embedded error estimate can underestimate the true local error by a modest factor;
ten covers it without hiding a real violation (those are orders of magnitude larger).
"""

EPS64 = float(np.finfo(np.float64).eps)
"""Machine epsilon of float64, the unit of every round-off term."""

LEMMA_WEIGHT = 3.0
"""Weight of each interface's drift in the Lemma's tolerance: ε combines the ‖D_j‖_2 (weight
2) and the squared norms ‖W_k‖_F² (weight 3, tied to the D_j through their traces), so a
drift ΔD_j moves the ε that the trajectory obeys by at most 3(1 + √d_j)‖ΔD_j‖_F."""

PL_RTOL = 1e-9
"""Relative slack of the pointwise PL check: both sides are exact formulas, only
round-off separates them."""

SHARPNESS_RTOL = 1e-6
"""Relative slack on a sharpness held to a closed-form bound (a dense `eigvalsh` or a
recorded Lanczos value is far more accurate than this)."""

GD_RTOL = 0.02
"""Relative slack of the GD stability checks: a run that meets its stopping tolerance
within its step budget may still sit near an unstable minimizer whose instability grows
too slowly to show, and its final sharpness is an iterative estimate."""


def accepted_steps(attrs: dict) -> int:
    """N, the solver's accepted steps, from a trajectory's `attrs` (0 when absent)."""
    return int(attrs.get("num_accepted_steps", attrs.get("num_steps", 0)))


def roundoff(scale):
    """8 ε_mach·|scale|: the round-off of a few float64 operations on numbers of that size."""
    return 8 * EPS64 * np.abs(scale)


def local_error_bound(attrs: dict, n_state: int, entry_max: float) -> float:
    """δ = √n (atol + rtol·M): a bound on the Euclidean norm of one accepted step's local
    error in any part of a state of n components, all of modulus ≤ M.

    Diffrax's PID controller accepts a step when the RMS over the n components of
    error_i / (atol + rtol·|y_i|) is ≤ 1, so ‖error‖_2 ≤ √n (atol + rtol·M).
    """
    rtol, atol = float(attrs["flow_rtol"]), float(attrs["flow_atol"])
    return math.sqrt(n_state) * (atol + rtol * entry_max)


def steps_per_interval(steps, N: int, n_saves: int) -> np.ndarray:
    """Steps that can have moved the state between consecutive saves: the accepted steps
    that ended inside the interval, plus the two steps that the interpolated saves at its
    ends sit in. From the recorded cumulative `solver_steps`; without it, N + 2 for every
    interval (the whole run's budget)."""
    if steps is None:
        return np.full(max(n_saves - 1, 0), N + 2.0)
    return np.diff(np.asarray(steps, np.float64)) + 2.0


def steps_up_to(steps, N: int, n_saves: int) -> np.ndarray:
    """Steps that can have moved the state from t = 0 to each save (the cumulative record
    plus the step the save sits in; N + 1 for every save without the record)."""
    if steps is None:
        return np.full(n_saves, N + 1.0)
    return np.asarray(steps, np.float64) + 1.0


def conservation_tolerance(n_steps, weight_max: float, delta: float):
    """Allowed change of D_k = W_{k+1}ᵀW_{k+1} − W_kW_kᵀ over `n_steps` steps.

    D_k is conserved by the exact flow from any point, so a numerical solution's D_k moves
    only at the jumps its local errors make, and those add up without being amplified. A
    jump δW moves D_k by at most 2‖W‖δ + δ² in Frobenius norm, hence SAFETY·n(2‖W‖δ + δ²),
    plus round-off 10·n·ε_mach‖W‖² of forming D_k.
    """
    n = np.asarray(n_steps, np.float64)
    return SAFETY * n * (2.0 * weight_max * delta + delta**2) + 10.0 * n * EPS64 * weight_max**2


def risk_increase_tolerance(n_steps, grad_max: float, delta: float, scale):
    """How much R may rise over `n_steps` steps: the exact flow never raises it, and a local
    error e moves R by at most ‖∇R‖‖e‖, hence SAFETY·n·max‖∇R‖·δ, plus round-off of a risk
    of size `scale`."""
    return SAFETY * np.asarray(n_steps, np.float64) * grad_max * delta + roundoff(scale)


def energy_tolerance(n_steps, grad_max: float, delta: float, delta_energy: float, sharp_max: float, scale):
    """Allowed |R(0) − R(t) − E(t)| after `n_steps` steps.

    Φ = R(W) + E is conserved by the exact augmented flow (dE/dt = ‖∇R‖² = −dR/dt) from any
    point, so, as for D_k, only the local errors (e_W, e_E) move it: by at most
    ‖∇R‖‖e_W‖ + ½S‖e_W‖² + |e_E| each. Hence SAFETY·n(max‖∇R‖·δ + ½S_max·δ² + δ_E), plus
    round-off of numbers of size `scale`.
    """
    n = np.asarray(n_steps, np.float64)
    return SAFETY * n * (grad_max * delta + 0.5 * sharp_max * delta**2 + delta_energy) + roundoff(scale)


def lemma_tolerance(drift, interface_widths, weight_sq_max: float):
    """Tolerance of the Lemma's inequalities at each save, from the measured drift.

    The Lemma's invariants are algebra in the D_k; the numerical trajectory obeys them with ε
    computed from D_k(t) instead of D_k(0), which differs by at most
    Σ_j LEMMA_WEIGHT·(1 + √d_j)·‖D_j(t) − D_j(0)‖_F ([`LEMMA_WEIGHT`][]; d_j the width at
    interface j), plus round-off of SVDs of matrices of squared norm ≤ `weight_sq_max`.
    `drift` has shape (saves, interfaces) or (interfaces,).
    """
    weights = LEMMA_WEIGHT * (1.0 + np.sqrt(np.asarray(interface_widths, np.float64)))
    return np.asarray(drift, np.float64) @ weights + roundoff(weight_sq_max)


def distance_to_limit(excess: float, pl_constant: float) -> float:
    """A bound on ‖W(t) − W(∞)‖ from R − R_min = `excess` under the PL inequality.

    Along GF, d√(R − R_min)/dt ≤ −(√μ/2)‖∇R‖ when ‖∇R‖² ≥ μ(R − R_min), so the rest of the path
    is at most 2√((R − R_min)/μ) long. μ is taken as half the pointwise PL lower bound at the
    last save, which changes little once the run has converged.
    """
    if not (pl_constant > 0) or not np.isfinite(excess):
        return math.inf
    return 2.0 * math.sqrt(max(excess, 0.0) / (pl_constant / 2.0))


def hessian_tolerance(residual_norm: float, n_params: int, hessian_norm: float) -> float:
    """‖B‖_2 + round-off: at a point where w(W) is within reach of π*, ∇²R = 2JᵀΣ̂J + B with
    B = ∇²⟨g, w(W)⟩ (g = 2Σ̂(w − π*)), so by Weyl's inequality every eigenvalue of ∇²R is
    within ‖B‖_2 of one of 2JᵀΣ̂J ⪰ 0 (2JᵀJ/n + B with the outputs f(X) for a network with
    an activation: `theory.curvature`); round-off of a dense P × P eigenproblem is about
    P·ε_mach‖∇²R‖."""
    return residual_norm + 10.0 * n_params * EPS64 * hessian_norm


def gd_balance_tolerance(steps, width: int, weight_sq_max):
    """Round-off allowed in the GD identity D_k(K) − D_k(0) = η²Σ_j(G_{k+1}ᵀG_{k+1} − G_kG_kᵀ).

    The identity is exact in exact arithmetic; per step the update, the products forming D_k
    and the cancelling first-order terms each carry round-off of about d·ε_mach‖W‖² (d the
    largest width, ‖ηG‖ ≤ 2‖W‖ for a run that has not diverged). Over K steps:
    SAFETY·(K + 1)·3d·ε_mach·max‖W‖².
    """
    return SAFETY * (np.asarray(steps, np.float64) + 1.0) * 3.0 * width * EPS64 * np.asarray(weight_sq_max)


def excess_risk_tolerance(recorded: float, recomputed: float, Lam: float, pi_star_norm_sq: float,
                          w_error: float = 0.0) -> float:
    """1e-8 relative, plus 1e3 ε_mach²·Λ‖π*‖², plus 2√(ΛE)δ + Λδ²: the recorded and the
    recomputed excess risk E are the same formula evaluated on the same weights. The second
    term is the round-off of (w − π*)ᵀΣ̂(w − π*) at w ≈ π*; the third that of w itself, when
    the two evaluations form the product of layers in different orders (`w_error` = δ
    bounds ‖Δw‖): E moves by 2(w − π*)ᵀΣ̂Δw + ΔwᵀΣ̂Δw. Both matter only at the minimizer
    (at E = 3e-20 an ulp of w moved E by 5e-26, 1e-6 of it)."""
    E = max(recorded, recomputed)
    return 1e-8 * E + 1e3 * EPS64**2 * Lam * pi_star_norm_sq + 2 * math.sqrt(Lam * E) * w_error + Lam * w_error**2


def product_roundoff(widths, norm: float) -> float:
    """Bound on the round-off of a chain of vector–matrix products through layers of these
    `widths` (d_0, …, d_L) whose result has norm `norm`: L·max d_k·ε_mach·norm (each product
    rounds each entry of a sum of at most max d_k terms; the small-scale and residual networks
    here are near balanced, so the partial products' norms stay near the result's)."""
    return (len(widths) - 1) * max(widths) * EPS64 * norm


def distance_tolerance(bound: float, pi_star_norm: float) -> float:
    """1e-6 relative to √((R − R_min)/λ), plus 1e-12‖π*‖ of round-off in w − π*."""
    return 1e-6 * bound + 1e-12 * pi_star_norm


def sharpness_rtol(distance: float, depth: int, Lam: float, a: float, pi_star_norm: float) -> float:
    """Relative slack on S at an approximate minimizer, `distance` = ‖w − π*‖ away.

    S is smooth in W; at an approximate minimizer it differs from the limit's S to first
    order in the distance: relative 2δ/‖π*‖ through c, and (Λ/a)·L·δ through the residual
    term; plus [`SHARPNESS_RTOL`][].
    """
    return SHARPNESS_RTOL + (2.0 + depth * Lam / a) * distance / pi_star_norm
