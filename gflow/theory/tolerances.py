"""How much numerical slack each check allows, and where it comes from.

A check's margin is bound − observed + tolerance (or observed − bound + tolerance), so a
tolerance is the part of a violation that solver error or round-off could explain. Each
one is derived here from the solver's settings and what the trajectory records.
"""

from __future__ import annotations

import math

import numpy as np

SAFETY = 10.0
"""Factor between the controller's accepted local error and what a check allows.

An embedded error estimate can underestimate the true local error by a modest factor;
ten covers it without hiding a real violation (those are orders of magnitude larger).
"""

EPS64 = float(np.finfo(np.float64).eps)
"""Machine epsilon of float64, the unit of every round-off term."""

RESOLVED = 1.5
"""Largest ratio of ‖∇R‖² across a save interval (and its neighbours) for which the
energy identity is checked on it: below it ‖∇R‖² is taken to be monotone between saves."""

PL_RTOL = 1e-9
"""Relative slack of the pointwise PL check: both sides are exact formulas, only
round-off separates them."""

SHARPNESS_RTOL = 1e-6
"""Relative slack on a sharpness held to a closed-form bound (a dense `eigvalsh` or a
recorded Lanczos value is far more accurate than this)."""

GD_RTOL = 0.02
"""Relative slack of the GD checks: runs stop near, not at, a minimizer, and their final
sharpness is an iterative estimate that underestimates."""


def accepted_steps(attrs: dict) -> int:
    """N, the solver's accepted steps, from a trajectory's `attrs` (0 when absent)."""
    return int(attrs.get("num_accepted_steps", attrs.get("num_steps", 0)))


def roundoff(scale):
    """8 ε_mach·|scale|: the round-off of a few float64 operations on numbers of that size."""
    return 8 * EPS64 * scale


def local_error_bound(attrs: dict, n_params: int, entry_max: float) -> float:
    """δ = √P (atol + rtol·M): a bound on ‖local error‖_2 of one accepted step.

    Diffrax's PID controller accepts a step when the RMS over all P parameters of
    error_i / (atol + rtol·|y_i|) is ≤ 1; with every |y_i| ≤ M the Euclidean norm of the
    error is then at most √P (atol + rtol·M).
    """
    rtol, atol = float(attrs["flow_rtol"]), float(attrs["flow_atol"])
    return math.sqrt(n_params) * (atol + rtol * entry_max)


def conservation_tolerance(attrs: dict, n_params: int, entry_max: float, weight_max: float) -> float:
    """Allowed drift of D_k = W_{k+1}ᵀW_{k+1} − W_kW_kᵀ after a solve.

    D_k is conserved by the exact flow from *any* point, so a numerical solution's D_k
    moves only at the jumps the local errors make, and those add up without being
    amplified. A jump δW moves D_k by at most 2‖W‖δ + δ² in Frobenius norm. Over N
    accepted steps: N (2‖W‖_max δ + δ²), times [`SAFETY`][], plus round-off N·ε_mach‖W‖².
    """
    N = accepted_steps(attrs)
    delta = local_error_bound(attrs, n_params, entry_max)
    return SAFETY * N * (2.0 * weight_max * delta + delta**2) + 10.0 * N * EPS64 * weight_max**2


def alignment_tolerance(conservation_tol: float, sigma):
    """(conservation tolerance)/σ²: the Lemma's alignment bound 1 − ε/σ² moves by at most
    this when ε, which D_k bounds, is off by the conservation tolerance."""
    return conservation_tol / sigma**2


def risk_tolerance(N: int, delta: float, grad_norm, scale):
    """SAFETY·N·‖∇R‖·δ + round-off of a risk of size `scale`: the change of R that N local
    errors can make, since a local error e moves R by at most ‖∇R‖‖e‖ ≤ ‖∇R‖δ."""
    return SAFETY * N * grad_norm * delta + roundoff(scale)


def gradient_norm_stand_in(S_upper: float, risk0: float) -> float:
    """√(2·S_upper·max(R(0), 1)), used for max‖∇R‖ when ‖∇R‖² is not recorded.

    The form ‖∇R‖² ≤ 2β(R − inf R) of a β-smooth function, with β taken as S_upper and
    R − inf R ≤ max(R(0), 1): a heuristic scale, not a bound along the whole path.
    """
    return math.sqrt(2 * S_upper * max(float(risk0), 1.0))


def excess_risk_tolerance(recorded: float, recomputed: float, Lam: float, pi_star_norm_sq: float) -> float:
    """1e-8 relative, plus 1e3 ε_mach²·Λ‖π*‖²: the recorded and the recomputed excess risk
    are the same formula evaluated on the same weights (the second term, round-off of
    (w − π*)ᵀΣ̂(w − π*) at w ≈ π*, matters only at the minimizer)."""
    return 1e-8 * max(recorded, recomputed) + 1e3 * EPS64**2 * Lam * pi_star_norm_sq


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
