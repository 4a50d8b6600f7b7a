"""The Hessian at the end of a converged GF run, and the bracket of S_min (theory.md §2, §6, §8).

At a global minimizer ∇²R = 2JᵀΣ̂J: positive semidefinite, and its top eigenvalue is the
sharpness. Near one, ∇²R = 2JᵀΣ̂J + B with ‖B‖_2 small; the three pieces are computed
independently (`theory.curvature`), so these checks catch a wrong Hessian, a wrong sharpness
or a run that stopped at a saddle. A network with an activation has the same split with the
outputs f(X) in place of w (2JᵀJ/n + B), and the checks apply at its converged points.
"""

from __future__ import annotations

import math

from .context import RunContext
from .tolerances import hessian_tolerance, roundoff
from .verdict import Check, judge, missing, not_applicable

_MINIMIZER = "Hessian at a global minimizer = 2JᵀΣ̂J ⪰ 0, theory.md §6 and §8"


def curvature_checks(ctx: RunContext) -> list[Check]:
    """S_lower ≤ S_balanced ≤ S_upper, then (converged runs, with the data at hand) the
    Hessian at W_final: positive semidefinite, and its top eigenvalue equal to 2JᵀΣ̂J's."""
    return [balanced_between_bounds(ctx), *hessian_at_minimizer(ctx)]


def balanced_between_bounds(ctx: RunContext) -> Check:
    """The balanced aligned minimizer's sharpness lies in [S_lower, S_upper]."""
    b = ctx.bounds
    stmt = "S_lower ≤ S_balanced ≤ S_upper (S_balanced: the balanced rank-one minimizer aligned with π*)"
    src = "closed forms of theory.md §2 and §8"
    if not ctx.is_linear:
        return not_applicable("balanced_between_bounds", stmt, src,
                              ctx.linear_only("closed forms for the minimizers of linear networks (theory.md §2)"))
    if "S_balanced" not in b:
        return missing("balanced_between_bounds", stmt, src, "S_balanced (recorded by every gflow solve)")
    S = b["S_balanced"]
    lower_side = S - b["S_lower"] <= b["S_upper"] - S
    bound = b["S_lower"] if lower_side else b["S_upper"]
    return judge("balanced_between_bounds", stmt, src, S, bound, upper=not lower_side,
                 tolerance=float(roundoff(b["S_upper"])),
                 note=f"tightest: the {'lower' if lower_side else 'upper'} side; S_lower = {b['S_lower']:.6g}, "
                 f"S_upper = {b['S_upper']:.6g}; tolerance round-off")


def hessian_at_minimizer(ctx: RunContext) -> list[Check]:
    """λ_min(∇²R) ≥ −tolerance and |S − λ_max(2JᵀMJ)| ≤ tolerance at W_final."""
    psd = "λ_min(∇²R(W_final)) ≥ 0: the Hessian at a minimizer is positive semidefinite"
    gn, split = (("S(W_final) = λ_max(2JᵀΣ̂J), J = ∂w/∂W", "B = ∇²⟨g, w⟩ with g = 2Σ̂(w − π*)") if ctx.is_linear else
                 ("S(W_final) = λ_max(2JᵀJ/n), J = ∂f(X)/∂W", "B = ∇²⟨g, f(X)⟩ with g = (2/n)(f(X) − y)"))
    gn += ": the sharpness at a minimizer from the Jacobian alone"
    curv = ctx.curvature
    if curv is None:
        return [missing(name, stmt, _MINIMIZER, "the data (pass the Problem; `gflow check` reads scenario.toml)")
                for name, stmt in (("hessian_psd_at_minimizer", psd), ("sharpness_gauss_newton", gn))]
    at_minimizer = ctx.converged and (ctx.full_rank or not ctx.is_linear)
    tol = hessian_tolerance(curv.residual_norm, curv.n_params, curv.hessian_norm)
    how = "dense" if curv.dense else f"Lanczos (‖B‖ inflated ×1.5: Ritz values underestimate)"
    note = (f"tolerance ‖B‖_2 + round-off = {curv.residual_norm:.3g} + {tol - curv.residual_norm:.3g}, "
            f"{split} (Weyl's inequality); eigenvalues {how}"
            + ("" if at_minimizer else f"; status {ctx.status}, not at a minimizer"))
    return [
        judge("hessian_psd_at_minimizer", psd, _MINIMIZER, curv.min_eigenvalue, 0.0, upper=False, time=ctx.t_end,
              tolerance=tol, assumptions=at_minimizer, note=note),
        judge("sharpness_gauss_newton", gn, _MINIMIZER, abs(curv.sharpness - curv.gauss_newton_top), 0.0,
              upper=True, time=ctx.t_end, tolerance=tol, assumptions=at_minimizer and math.isfinite(tol),
              note=f"S = {curv.sharpness:.10g}, Gauss–Newton top = {curv.gauss_newton_top:.10g}; " + note),
    ]
