"""The checks of the continuous-time models of GD at a finite step size (theory.md §11, §9).

A trajectory of the modified flow or the central flow is judged by the GF checks that
still apply (the stored end point, pointwise PL, the final sharpness and Hessian, which are
statements about a point, not a path), and by its own:

- the modified flow is GF on R̃ = R + (η/4)‖∇R‖²: R̃ never increases and R̃(0) − R̃(t) = Ẽ(t)
  with Ẽ = ∫‖∇R̃‖² (`modified_monotone_risk`, `modified_energy_identity`);
- the central flow is a projected GF: R never increases and R(0) − R(t) = E(t) with
  E = ∫−⟨∇R, dw/dt⟩ (GF's own `monotone_risk` and `energy_identity`, unchanged), and it
  keeps the top Hessian eigenvalue at most 2/η (`central_edge_stability`).

The conservation law, the Lemma and the corollary are about GF's path: neither finite-step
flow conserves D_k (∇‖∇R‖² and ∇λ₁ are not invariant under the rescalings behind it), so
those checks are "not applicable" here.
"""

from __future__ import annotations

import numpy as np

from ..central import RELAXATION, SHARPNESS, SLOPE
from ..dynamics import MODIFIED_GRAD, MODIFIED_RISK
from ..solver import ENERGY
from .context import RunContext
from .tolerances import SAFETY, energy_tolerance, risk_increase_tolerance, roundoff
from .verdict import Check, judge_worst, missing

_GF_PATH = ("conservation", "conservation_final_weights", "residual_theta", "residual_products_final",
            "residual_products_trajectory", "residual_sharpness_ratio")
_GF_PREFIXES = ("lemma_", "corollary_")
_MODIFIED = "modified equation of GD, Barrett & Dherin 2021; theory.md §11"
_CENTRAL = "central flow of GD, Cohen, Damian et al. 2025; theory.md §11"


def finite_step_checks(ctx: RunContext, checks: list[Check]) -> list[Check]:
    """`checks` (those of a GF trajectory) for the dynamics of `ctx`: unchanged for gradient
    flow; for a finite-step flow, the statements about GF's path marked "not applicable"
    and the flow's own checks appended."""
    dynamics = str(ctx.attrs.get("dynamics", "gradient_flow"))
    if dynamics == "gradient_flow":
        return checks
    path = set(_GF_PATH) | ({"monotone_risk", "energy_identity"} if dynamics == "modified" else set())
    out = [_about_gf(c, dynamics) if c.name in path or c.name.startswith(_GF_PREFIXES) else c for c in checks]
    if dynamics == "modified":
        return out + [modified_monotone_risk(ctx), modified_energy_identity(ctx)]
    return out + [central_edge_stability(ctx)]


def _about_gf(check: Check, dynamics: str) -> Check:
    return Check(check.name, check.statement, check.source, "not applicable",
                 note=f"a statement about gradient flow's path; this trajectory is the {dynamics} flow at "
                 "η = its step_size (theory.md §11)")


def _modified_series(ctx: RunContext):
    """(R̃ − R_min, max‖∇R̃‖) recorded along the modified flow, or None."""
    ds = ctx.ds
    if MODIFIED_RISK not in ds or MODIFIED_GRAD not in ds:
        return None
    return ds[MODIFIED_RISK].values, float(np.sqrt(np.nanmax(ds[MODIFIED_GRAD].values)))


def modified_monotone_risk(ctx: RunContext) -> Check:
    """R̃ is non-increasing: each save interval's rise within what its steps' local errors
    can add (the budget of `monotone_risk` with ‖∇R̃‖ for ‖∇R‖)."""
    stmt = "R̃ = R + (η/4)‖∇R‖² is non-increasing: R̃(t_{i+1}) − R̃(t_i) ≤ 0 between saves"
    series = _modified_series(ctx)
    if series is None:
        return missing("modified_monotone_risk", stmt, _MODIFIED, f"{MODIFIED_RISK} and {MODIFIED_GRAD}")
    values, grad_max = series
    tol = risk_increase_tolerance(ctx.interval_steps, grad_max, ctx.delta, np.abs(values[1:]))
    return judge_worst("modified_monotone_risk", stmt, _MODIFIED, np.diff(values), 0.0, tol, upper=True,
                       times=ctx.times[1:], assumptions=ctx.has_steps,
                       note=f"budget {SAFETY:g}·n·max‖∇R̃‖·δ per interval of n steps (a local error e moves R̃ by "
                       "≤ ‖∇R̃‖‖e‖) + round-off")


def modified_energy_identity(ctx: RunContext) -> Check:
    """R̃(0) − R̃(t) = Ẽ(t) at every save, Ẽ = ∫‖∇R̃‖² integrated with the flow."""
    stmt = "R̃(0) − R̃(t) = Ẽ(t) = ∫₀ᵗ ‖∇R̃‖² ds at every save (Ẽ integrated with the flow)"
    series = _modified_series(ctx)
    if series is None or ENERGY not in ctx.ds:
        return missing("modified_energy_identity", stmt, _MODIFIED, f"{MODIFIED_RISK}, {MODIFIED_GRAD} and {ENERGY}")
    values, grad_max = series
    energy = ctx.ds[ENERGY].values
    eta = float(ctx.attrs["step_size"])
    curvature = 2.0 * ctx.sharp_max * (1.0 + eta * ctx.sharp_max)
    tol = energy_tolerance(ctx.steps_to_save, grad_max, ctx.delta, ctx.delta_energy, curvature,
                           np.abs(values[0]) + np.abs(energy))
    gap = np.abs((values[0] - values) - energy)
    return judge_worst("modified_energy_identity", stmt, _MODIFIED, gap, 0.0, tol, upper=True, times=ctx.times,
                       assumptions=ctx.has_steps,
                       note=f"budget {SAFETY:g}·n(max‖∇R̃‖·δ + ½S̃·δ² + δ_E) after n steps (R̃ + Ẽ is conserved by the "
                       "exact flow), S̃ = 2S(1 + ηS) standing for ‖∇²R̃‖ in the second-order term")


def edge_tolerance(times, interval_steps, slope_max: float, delta: float, step_size: float, sharpness):
    """Allowed excess of λ₁ over 2/η at each save but the first (the save times `times`,
    `interval_steps` steps within each save interval).

    The exact central flow keeps λ₁ ≤ 2/η; where it holds λ₁ at 2/η, its drift term pulls
    λ₁ back at the rate κ = RELAXATION/η, and below the edge the entering event stops the
    phase where the numerical λ₁ reaches 2/η. A local error e moves λ₁ by at most
    ‖∇λ₁‖‖e‖ ≤ J = max‖∇λ₁‖·δ, and a jump made at time s has decayed by e^{−κ(t − s)} at t.
    The n_l steps of save interval l end by t_l, so the excess at save i is at most
    J·Σ_{l ≤ i} n_l·e^{−κ(t_i − t_l)}: SAFETY times that, plus the round-off of an
    eigenvalue of size `sharpness`.
    """
    t = np.asarray(times, np.float64)[1:]
    n = np.asarray(interval_steps, np.float64)
    kappa = RELAXATION / step_size
    decay = np.exp(-kappa * np.clip(t[:, None] - t[None, :], 0.0, None)) * (t[None, :] <= t[:, None])
    return SAFETY * slope_max * delta * (decay @ n) + 1e3 * roundoff(sharpness)


def central_edge_stability(ctx: RunContext) -> Check:
    """λ₁ ≤ 2/η at every save of the central flow (from its own eigensolver), from a
    stable start."""
    stmt = "the top Hessian eigenvalue λ₁ ≤ 2/η at every save (the central flow keeps GD at the edge, not past it)"
    ds = ctx.ds
    if SHARPNESS not in ds or SLOPE not in ds:
        return missing("central_edge_stability", stmt, _CENTRAL, f"{SHARPNESS} and {SLOPE}")
    eta = float(ctx.attrs["step_size"])
    lam = ds[SHARPNESS].values
    edge = 2.0 / eta
    slope = float(np.nanmax(ds[SLOPE].values))
    tol = edge_tolerance(ctx.times, ctx.interval_steps, slope, ctx.delta, eta, edge)
    stable = bool(lam[0] <= edge)
    note = (f"budget {SAFETY:g}·max‖∇λ₁‖·δ·Σ_l n_l·e^{{−κ(t − t_l)}} over the save intervals l before t (n_l steps "
            f"each), κ = {RELAXATION:g}/η (the drift term's rate), max‖∇λ₁‖ = {slope:.4g}; largest (λ₁ − 2/η)η/2 = "
            f"{float(np.nanmax(lam) - edge) * eta / 2:.3g}")
    if not stable:
        note = f"λ₁(0) = {lam[0]:.6g} > 2/η: GD starts unstable, and the flow relaxes to the edge; " + note
    return judge_worst("central_edge_stability", stmt, _CENTRAL, lam[1:], edge, tol, upper=True, times=ctx.times[1:],
                       assumptions=stable and ctx.has_steps, note=note)
