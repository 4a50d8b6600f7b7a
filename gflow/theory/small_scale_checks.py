"""The small-scale Lemma along a GF trajectory and its corollary at the end (theory.md §4)."""

from __future__ import annotations

import numpy as np

from ..models import MLP
from .closed_forms import assumption_a2, smallness
from .context import RunContext
from .tolerances import SHARPNESS_RTOL, alignment_tolerance, roundoff
from .verdict import Check, argmax2, judge, missing

_LEMMA = "Lemma (small-scale invariants), theory.md §4"
_COROLLARY = "Corollary (small-scale initialization), theory.md §4"


def small_scale_checks(ctx: RunContext) -> list[Check]:
    """The Lemma's invariants (i)–(iii) at every save, then the corollary's statements."""
    lemma_ok, why = _lemma_assumptions(ctx)
    return lemma_checks(ctx, lemma_ok, why) + corollary_checks(ctx, lemma_ok, why)


def _a2(ctx: RunContext) -> tuple[bool, str]:
    """(A2) from the Problem, or from the excess risk and gradient recorded at t = 0.

    R(W(0)) − ‖y‖²/n = (w₀ − π*)ᵀΣ̂(w₀ − π*) − π*ᵀΣ̂π*: with the Problem it is formed as
    w₀ᵀΣ̂w₀ − 2w₀ᵀΣ̂π*, free of cancellation (a tiny init puts it near 1e-14).
    """
    ds = ctx.ds
    if ctx.problem is not None:
        ok, v = assumption_a2(ctx.initial, ctx.problem)
        return ok, f"R(W(0)) − ‖y‖²/n = {v['risk_minus_y_sq']:.3g}, ‖∇R(W(0))‖² = {v['grad_norm_sq_initial']:.3g}"
    if "excess_risk" in ds and "grad_norm_sq" in ds:
        # ‖y‖²/n − R_min = π*ᵀΣ̂π* = a‖π*‖²
        ref = float(ds.attrs["a"]) * float(ds.attrs["pi_star_norm"]) ** 2
        diff, g0 = float(ds.excess_risk.values[0]) - ref, float(ds.grad_norm_sq.values[0])
        if abs(diff) <= roundoff(ref):
            return g0 > 0, (f"R(W(0)) − ‖y‖²/n = {diff:.3g} is round-off from the recorded values (pass the "
                            f"Problem to decide); taken as holding, ‖∇R(W(0))‖² = {g0:.3g}")
        return diff <= 0 and g0 > 0, f"R(W(0)) − ‖y‖²/n = {diff:.3g}, ‖∇R(W(0))‖² = {g0:.3g}"
    return False, "excess_risk and grad_norm_sq at t = 0 not recorded and no Problem given"


def _lemma_assumptions(ctx: RunContext) -> tuple[bool, list[str]]:
    """Whether the Lemma applies (an MLP with p = 1, (A2), known solver settings), and why not."""
    is_mlp = isinstance(ctx.initial, MLP) and np.allclose(np.asarray(ctx.initial.p), 1.0)
    a2, a2_note = _a2(ctx)
    why = []
    if not is_mlp:
        why.append("not an MLP with p = 1")
    if not a2:
        why.append(f"(A2) fails or is unverifiable ({a2_note})")
    if not ctx.has_steps:
        why.append("solver settings missing")
    return is_mlp and a2 and ctx.has_steps, why


def lemma_checks(ctx: RunContext, lemma_ok: bool, why: list[str]) -> list[Check]:
    """(i) rank-one gap ≤ ε, (ii) |σ_k² − σ_j²| ≤ ε, (iii) alignment ≥ 1 − ε/σ_{k+1}²."""
    ds, times, L, eps, tol = ctx.ds, ctx.times, ctx.depth, ctx.epsilon, ctx.conservation_tolerance
    note = f"ε = {eps:.4g}; " + ("; ".join(why) + "; " if why else "") + ctx.tolerance_note
    out = []
    stmt = "rank-one gap ‖W_k‖_F² − ‖W_k‖_2² ≤ ε for all k and t"
    if "rank_one_gap" in ds:
        v = ds.rank_one_gap.values
        i, k = argmax2(v)
        out.append(judge("lemma_rank_one", stmt, _LEMMA, v[i, k], eps, upper=True, time=times[i], tolerance=tol,
                         assumptions=lemma_ok, note=f"worst at layer {k + 1}; " + note))
    else:
        out.append(missing("lemma_rank_one", stmt, _LEMMA, "rank_one_gap"))

    stmt = "balanced norms |σ_k² − σ_j²| ≤ ε for all j, k and t"
    if "singular_values" in ds and L >= 2:
        s2 = ds.singular_values.values ** 2
        spread = s2.max(axis=1) - s2.min(axis=1)
        i = int(np.nanargmax(spread))
        out.append(judge("lemma_balanced_norms", stmt, _LEMMA, spread[i], eps, upper=True, time=times[i],
                         tolerance=tol, assumptions=lemma_ok, note=note))
    elif L >= 2:
        out.append(missing("lemma_balanced_norms", stmt, _LEMMA, "singular_values"))

    stmt = "alignment ⟨v_{k+1}, u_k⟩² ≥ 1 − ε/σ_{k+1}² for all k and t"
    if "alignment" in ds and "singular_values" in ds and L >= 2:
        al = ds.alignment.values
        s_up = ds.singular_values.values[:, 1:]
        bound = 1.0 - eps / s_up**2
        tol_al = alignment_tolerance(tol, s_up)
        slack = al - bound + tol_al
        i, k = np.unravel_index(int(np.nanargmin(slack)), slack.shape)
        out.append(judge("lemma_alignment", stmt, _LEMMA, al[i, k], bound[i, k], upper=False, time=times[i],
                         tolerance=tol_al[i, k], assumptions=lemma_ok,
                         note=f"worst at interface {k + 1}; tolerance (conservation tolerance)/σ_{{k+1}}²; " + note))
    elif L >= 2:
        out.append(missing("lemma_alignment", stmt, _LEMMA, "alignment and singular_values"))
    return out


def corollary_checks(ctx: RunContext, lemma_ok: bool, why: list[str]) -> list[Check]:
    """Convergence, then the limit's rank-one gap, norm band, alignment and sharpness."""
    eps = ctx.epsilon
    small = smallness(eps, ctx.depth)
    cor_ok = lemma_ok and small <= 1.0 and ctx.full_rank
    why = list(why)
    if small > 1.0:
        why.append(f"32L√ε = {small:.3g} > 1")
    if not ctx.full_rank:
        why.append("Σ̂ not full rank")
    note = f"ε = {eps:.4g}, 32L√ε = {small:.3g}" + ("; " + "; ".join(why) if why else "")
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


def _at_the_limit(ctx: RunContext, end_ok: bool, note: str) -> list[Check]:
    """The corollary's statements about the limit, held at the stored final weights."""
    b, L, eps, tol, t_end = ctx.bounds, ctx.depth, ctx.epsilon, ctx.conservation_tolerance, ctx.t_end
    Ws = [np.asarray(w) for w in ctx.final.layers()]
    gaps = np.array([float(np.sum(np.linalg.svd(w, compute_uv=False)[1:] ** 2)) for w in Ws])
    k = int(gaps.argmax())
    out = [judge("corollary_rank_one", "at the limit, ‖W_k‖_F² − ‖W_k‖_2² ≤ ε for all k", _COROLLARY, gaps[k], eps,
                 upper=True, time=t_end, tolerance=tol, assumptions=end_ok, note=f"worst at layer {k + 1}; " + note)]
    sv = np.array([np.linalg.svd(w, compute_uv=False)[0] for w in Ws])
    lower = sv.min() - b["sigma_low"] <= b["sigma_high"] - sv.max()
    k = int(sv.argmin() if lower else sv.argmax())
    out.append(judge("corollary_low_norm", "at the limit, (‖π*‖/2)^{1/L} ≤ σ_k ≤ (2‖π*‖)^{1/L} for all k", _COROLLARY,
                     sv[k], b["sigma_low"] if lower else b["sigma_high"], upper=not lower, time=t_end, tolerance=tol,
                     assumptions=end_ok, note=f"tightest: {'lower' if lower else 'upper'} side at layer {k + 1}; "
                     f"band [{b['sigma_low']:.4g}, {b['sigma_high']:.4g}]; " + note))
    if L >= 2:
        norm = float(ctx.attrs["pi_star_norm"])
        al = np.array([float((np.linalg.svd(Ws[k + 1])[2][0] @ np.linalg.svd(Ws[k])[0][:, 0]) ** 2) for k in range(L - 1)])
        bound = 1.0 - eps / (2.0 * norm) ** (2.0 / L)
        weaker = 1.0 - eps / (norm / 2.0) ** (2.0 / L)
        k = int(al.argmin())
        out.append(judge("corollary_alignment",
                         "at the limit, ⟨v_{k+1}, u_k⟩² ≥ 1 − ε/(2‖π*‖)^{2/L} (as stated in the slides; unverified against the paper)",
                         _COROLLARY, al[k], bound, upper=False, time=t_end,
                         tolerance=alignment_tolerance(tol, b["sigma_low"]), assumptions=end_ok,
                         note=f"worst at interface {k + 1}; the Lemma's (iii) with σ ≥ (‖π*‖/2)^{{1/L}} only gives "
                         f"1 − ε/(‖π*‖/2)^{{2/L}} = {weaker:.6g}; " + note))
    S_fin, how = ctx.final_sharpness
    if S_fin is None:
        out.append(missing("corollary_sharpness", "S_lower ≤ S(W^SI) ≤ 4(Λ/λ)S_upper", _COROLLARY,
                           "sharpness (or pass the Problem)"))
    else:
        out.append(judge("corollary_sharpness", "S(W^SI) ≤ 4(Λ/λ)·S_min ≤ 4(Λ/λ)·S_upper (and S ≥ S_lower, checked below)",
                         _COROLLARY, S_fin, b["S_corollary_upper"], upper=True, time=t_end, assumptions=end_ok,
                         tolerance=SHARPNESS_RTOL * b["S_corollary_upper"],
                         note=f"S {how}; S/S_lower = {S_fin / b['S_lower']:.4g} (headline ratio); " + note))
    return out
