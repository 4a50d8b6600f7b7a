"""The small-scale Lemma along a GF trajectory and its corollary at the end (theory.md §4).

The Lemma's invariants follow from the conservation law alone, so they are judged on every
MLP (p = 1) whatever its initialization, with a tolerance from the measured drift of the
conserved D_k (theory.md §8). (A2) and 32L√ε ≤ 1 gate the corollary only.
"""

from __future__ import annotations

import math

import numpy as np

from ..models import MLP, row_product
from .closed_forms import assumption_a2, smallness
from .context import RunContext
from .tolerances import conservation_tolerance, distance_to_limit, lemma_tolerance, roundoff, sharpness_rtol
from .verdict import Check, judge, judge_worst, missing, not_applicable

_LEMMA = "Lemma (small-scale invariants), theory.md §4"
_COROLLARY = "Corollary (small-scale initialization), theory.md §4"


def small_scale_checks(ctx: RunContext) -> list[Check]:
    """(A2), the Lemma's invariants (i)–(iii) at every save, then the corollary."""
    if not ctx.is_linear or not _is_mlp(ctx):
        note = ("not an MLP with p = 1 (the small-scale setting of §4)" if ctx.is_linear
                else ctx.linear_only("the Lemma and the corollary concern deep linear networks (theory.md §4)"))
        return [not_applicable(name, "small-scale statement of §4", _LEMMA, note)
                for name in ("lemma_rank_one", "lemma_balanced_norms", "lemma_alignment", "corollary_converges")]
    a2 = a2_check(ctx)
    return [a2, *lemma_checks(ctx), *corollary_checks(ctx, a2.verdict == "holds")]


def _is_mlp(ctx: RunContext) -> bool:
    return isinstance(ctx.initial, MLP) and np.allclose(np.asarray(ctx.initial.p), 1.0)


def a2_check(ctx: RunContext) -> Check:
    """(A2) R(W(0)) ≤ ‖y‖²/n and ∇R(W(0)) ≠ 0, with its sign as recorded at solve time.

    R(W(0)) − ‖y‖²/n is read from `attrs` (recorded without cancellation when the run was
    made), else formed from the Problem; a value within its round-off has no decidable sign
    and (A2) is then not taken to hold. Failing (A2) is not a violation: it only leaves the
    corollary without its hypothesis."""
    stmt = "(A2): R(W(0)) ≤ ‖y‖²/n and ∇R(W(0)) ≠ 0 (a hypothesis of the corollary, not of the Lemma)"
    attrs = ctx.attrs
    if "a2_risk_minus_y_sq" in attrs:
        diff, err, g0 = (float(attrs[f"a2_{k}"]) for k in ("risk_minus_y_sq", "risk_minus_y_sq_error", "grad_norm_sq_initial"))
        how = "recorded at solve time"
    elif ctx.problem is not None:
        _, v = assumption_a2(ctx.initial, ctx.problem)
        diff, err, g0 = v["risk_minus_y_sq"], v["risk_minus_y_sq_error"], v["grad_norm_sq_initial"]
        how = "from the Problem"
    else:
        return missing("assumption_a2", stmt, _COROLLARY, "the (A2) numbers of the solve, or the data")
    holds = diff < -err and g0 > 0
    sign = "undecidable (within round-off)" if abs(diff) <= err else ("≤ 0" if diff < 0 else "> 0")
    return Check("assumption_a2", stmt, _COROLLARY, "holds" if holds else "assumption not met", observed=diff,
                 bound=0.0, margin=-diff - err, time=0.0, tolerance=err,
                 note=f"R(W(0)) − ‖y‖²/n = {diff:.4g} ± {err:.2g} ({how}): sign {sign}; ‖∇R(W(0))‖² = {g0:.4g}")


def _drift(ctx: RunContext) -> tuple[np.ndarray | None, str]:
    """‖D_k(t) − D_k(0)‖_F at every save: recorded, else the a-priori budget up to each save."""
    if "balance_drift" in ctx.ds:
        return np.nan_to_num(ctx.ds.balance_drift.values, nan=np.inf), "measured drift of D_k"
    if ctx.has_steps:
        budget = conservation_tolerance(ctx.steps_to_save, ctx.weight_max, ctx.delta)
        return np.repeat(budget[:, None], ctx.depth - 1, axis=1), "a-priori drift budget (balance_drift not recorded)"
    return None, ""


def lemma_checks(ctx: RunContext) -> list[Check]:
    """(i) rank-one gap ≤ ε, (ii) |σ_k² − σ_j²| ≤ ε, (iii) alignment ≥ 1 − ε/σ_{k+1}², at
    every save, each within Σ_j 3(1 + √d_j)·drift_j(t) + round-off."""
    ds, times, eps = ctx.ds, ctx.times, ctx.epsilon
    drift, how = _drift(ctx)
    names = ("lemma_rank_one", "lemma_balanced_norms", "lemma_alignment")
    if drift is None or ctx.depth < 2:
        why = "L = 1: no interface" if ctx.depth < 2 else "neither balance_drift nor solver settings recorded"
        return [Check(n, "Lemma invariant", _LEMMA, "not applicable" if ctx.depth < 2 else "assumption not met",
                      note=why) for n in names]
    tol = lemma_tolerance(drift, ctx.interface_widths, ctx.weight_max**2)
    note = f"ε = {eps:.4g}; tolerance Σ_j 3(1 + √d_j)·drift_j(t) + round-off from the {how}"
    out = []
    stmt = "rank-one gap ‖W_k‖_F² − ‖W_k‖_2² ≤ ε for all k and t"
    sv = ds.singular_values.values if "singular_values" in ds else None
    if "rank_one_gap" in ds:
        rank = np.array([min(w) for w in zip(ctx.initial.widths[:-1], ctx.initial.widths[1:])])
        room = (rank - 1) * sv**2 if sv is not None else np.inf  # the largest gap σ_1 allows
        out.append(judge_worst(names[0], stmt, _LEMMA, ds.rank_one_gap.values, eps, tol[:, None], upper=True,
                               times=times, where=lambda i: f"layer {i[1] + 1}", note=note, informative=eps < room))
    else:
        out.append(missing(names[0], stmt, _LEMMA, "rank_one_gap"))
    stmt = "balanced norms |σ_k² − σ_j²| ≤ ε for all j, k and t"
    if sv is not None:
        s2 = sv**2
        out.append(judge_worst(names[1], stmt, _LEMMA, s2.max(axis=1) - s2.min(axis=1), eps, tol, upper=True,
                               times=times, note=note, informative=eps < s2.max(axis=1)))
    else:
        out.append(missing(names[1], stmt, _LEMMA, "singular_values"))
    stmt = "alignment ⟨v_{k+1}, u_k⟩² ≥ 1 − ε/σ_{k+1}² for all k and t"
    if "alignment" in ds and "singular_values" in ds:
        s_up = sv[:, 1:] ** 2
        out.append(judge_worst(names[2], stmt, _LEMMA, ds.alignment.values, 1.0 - eps / s_up,
                               tol[:, None] / s_up + roundoff(1.0), upper=False, times=times,
                               where=lambda i: f"interface {i[1] + 1}", note=note + ", divided by σ_{k+1}²",
                               informative=eps < s_up))
    else:
        out.append(missing(names[2], stmt, _LEMMA, "alignment and singular_values"))
    return out


def corollary_checks(ctx: RunContext, a2: bool) -> list[Check]:
    """Convergence, then the limit's rank-one gap, norm band, alignment and sharpness."""
    eps = ctx.epsilon
    small = smallness(eps, ctx.depth)
    cor_ok = a2 and small <= 1.0 and ctx.full_rank
    why = [w for w, bad in (("(A2) does not hold", not a2), (f"32L√ε = {small:.3g} > 1", small > 1.0),
                            ("Σ̂ not full rank", not ctx.full_rank)) if bad]
    note = "; ".join([f"ε = {eps:.4g}, 32L√ε = {small:.3g}", *why])
    out = [_converges(ctx, cor_ok, note)]
    if cor_ok and not ctx.converged:
        note += "; the run did not converge, its final point is not the limit"
    return out + _at_the_limit(ctx, cor_ok and ctx.converged, note)


def _converges(ctx: RunContext, cor_ok: bool, note: str) -> Check:
    """GF converges: holds at a converged run, violated when the solve broke down."""
    if ctx.converged:
        verdict, head = "holds", f"status {ctx.status}; "
    elif ctx.status in ("non_finite", "solver_failed"):
        verdict, head = "violated", f"status {ctx.status}; "
    else:
        verdict, head = "trend only", f"status {ctx.status}: the run stopped before convergence; "
    return Check("corollary_converges", "GF converges to a global minimizer", _COROLLARY,
                 verdict if cor_ok else "assumption not met", note=head + note, time=ctx.t_end)


def _end_geometry(ctx: RunContext):
    """At W_final: each layer's singular values, consecutive alignments, and the bound ℓ on
    the distance still to travel to the limit ([`distance_to_limit`][])."""
    svds = ctx.final_svd
    sv = [s for _, s, _ in svds]
    align = np.array([float((svds[k + 1][2][0] @ svds[k][0][:, 0]) ** 2) for k in range(len(svds) - 1)])
    excess = float(ctx.ds.excess_risk.values[-1]) if "excess_risk" in ctx.ds else math.inf
    row = row_product(ctx.final, skip=1, unroll=True)  # eager: a scan would compile at each call
    mu = 4.0 * float(ctx.attrs["lam"]) * float(np.sum(np.asarray(row) ** 2))
    return sv, align, distance_to_limit(excess, mu)


def _at_the_limit(ctx: RunContext, end_ok: bool, note: str) -> list[Check]:
    """The corollary's statements about the limit, held at the stored final weights."""
    b, L, eps, t_end = ctx.bounds, ctx.depth, ctx.epsilon, ctx.t_end
    sv, align, ell = _end_geometry(ctx)
    drift_end = ctx.final_drift
    tol = float(lemma_tolerance(drift_end, ctx.interface_widths, ctx.weight_max**2))
    note = f"{note}; ℓ = {ell:.3g} bounds the distance from W_final to the limit"
    gaps = np.array([float(np.sum(s[1:] ** 2)) for s in sv])
    out = [judge_worst("corollary_rank_one", "at the limit, ‖W_k‖_F² − ‖W_k‖_2² ≤ ε for all k", _COROLLARY, gaps,
                       eps, tol, upper=True, time=t_end, assumptions=end_ok, where=lambda i: f"layer {i[0] + 1}",
                       note=note + "; tolerance from the drift of D_k at W_final")]
    top = np.array([s[0] for s in sv])
    lower = top.min() - b["sigma_low"] <= b["sigma_high"] - top.max()
    k = int(top.argmin() if lower else top.argmax())
    out.append(judge("corollary_low_norm", "at the limit, (‖π*‖/2)^{1/L} ≤ σ_k ≤ (2‖π*‖)^{1/L} for all k", _COROLLARY,
                     top[k], b["sigma_low"] if lower else b["sigma_high"], upper=not lower, time=t_end,
                     tolerance=ell + float(roundoff(top.max())), assumptions=end_ok,
                     note=f"tightest: {'lower' if lower else 'upper'} side at layer {k + 1}; band "
                     f"[{b['sigma_low']:.4g}, {b['sigma_high']:.4g}]; tolerance ℓ (σ_k is 1-Lipschitz); " + note))
    norm = float(ctx.attrs["pi_star_norm"])
    if L >= 2:
        implied = 1.0 - eps / (norm / 2.0) ** (2.0 / L)
        slides = 1.0 - eps / (2.0 * norm) ** (2.0 / L)
        gap = min(max(s[0] - (s[1] if s.size > 1 else 0.0), 1e-300) for s in sv)
        k = int(align.argmin())
        out.append(judge("corollary_alignment", "at the limit, ⟨v_{k+1}, u_k⟩² ≥ 1 − ε/(‖π*‖/2)^{2/L} (the Lemma's (iii) "
                         "with the low-norm band)", _COROLLARY, align[k], implied, upper=False, time=t_end,
                         tolerance=tol / b["sigma_low"] ** 2 + 4.0 * ell / gap + float(roundoff(1.0)),
                         assumptions=end_ok,
                         note=f"worst at interface {k + 1}; the slides' stronger 1 − ε/(2‖π*‖)^{{2/L}} = {slides:.6g} "
                         f"is reported only ({'met' if align[k] >= slides else 'not met'}; theory.md §8); tolerance "
                         "drift/σ_low² + 4ℓ/(σ_1 − σ_2); " + note))
    out.append(_corollary_sharpness(ctx, end_ok, note))
    return out


def _corollary_sharpness(ctx: RunContext, end_ok: bool, note: str) -> Check:
    """S(W^SI) ≤ 4(Λ/λ)·S_balanced (S_balanced ≥ S_min)."""
    b, attrs = ctx.bounds, ctx.attrs
    ceiling = "S_balanced" if "S_balanced" in b else "S_upper"
    stmt = f"S(W^SI) ≤ 4(Λ/λ)·S_min ≤ 4(Λ/λ)·{ceiling} (and S ≥ S_lower, checked below)"
    S_fin, how = ctx.final_sharpness
    if S_fin is None:
        return missing("corollary_sharpness", stmt, _COROLLARY, "sharpness (or pass the Problem)")
    excess = float(ctx.ds.excess_risk.values[-1]) if "excess_risk" in ctx.ds else math.inf
    dist = math.sqrt(max(excess, 0.0) / float(attrs["lam"])) if ctx.full_rank else math.inf
    rel = sharpness_rtol(dist, ctx.depth, float(attrs["Lam"]), float(attrs["a"]), float(attrs["pi_star_norm"]))
    return judge("corollary_sharpness", stmt, _COROLLARY, S_fin, b["S_corollary_upper"], upper=True, time=ctx.t_end,
                 assumptions=end_ok, tolerance=rel * b["S_corollary_upper"],
                 note=f"S {how}; S/S_lower = {S_fin / b['S_lower']:.4g} (headline ratio); " + note)
