"""A gradient-flow trajectory held against theory.md: the classical identities of GF
(conservation, monotone risk, energy, pointwise PL), the stored end point, and the final
sharpness; the small-scale and residual statements live in their own modules."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .. import observables as obs
from ..models import Residual, end_to_end
from .closed_forms import norm_sharpness_bound, slides_norm_sharpness_bound
from .context import RunContext
from .residual_checks import residual_checks
from .small_scale_checks import small_scale_checks
from .tolerances import (
    PL_RTOL,
    RESOLVED,
    SAFETY,
    distance_tolerance,
    excess_risk_tolerance,
    gradient_norm_stand_in,
    risk_tolerance,
    sharpness_rtol,
)
from .verdict import Check, argmax2, judge, missing


def check_flow(ctx: RunContext) -> list[Check]:
    """Every check that applies to the GF trajectory of `ctx`, in a stable order:
    conservation, end point, monotone risk, energy identity, pointwise PL, the small-scale
    Lemma and corollary, the final sharpness, and (residual networks) §5."""
    out = conservation(ctx)
    out.append(final_consistency(ctx))
    out.append(monotone_risk(ctx))
    out.append(energy_identity(ctx))
    out.append(pl_pointwise(ctx.ds, ctx.times))
    out.extend(small_scale_checks(ctx))
    out.extend(final_sharpness_checks(ctx))
    if isinstance(ctx.initial, Residual):
        out.extend(residual_checks(ctx))
    return out


def conservation(ctx: RunContext) -> list[Check]:
    """D_k(t) = D_k(0) along the recorded trajectory and at the stored end point (L ≥ 2)."""
    if ctx.depth < 2:
        return []
    src = "conservation law of GF, theory.md §4 (exact along GF, any init)"
    stmt = "‖D_k(t) − D_k(0)‖_F = 0 for D_k = W_{k+1}ᵀW_{k+1} − W_kW_kᵀ, up to the solver's accepted local errors"
    tol, ok, tol_note = ctx.conservation_tolerance, ctx.has_steps, ctx.tolerance_note
    out = []
    if "balance_drift" in ctx.ds:
        v = ctx.ds.balance_drift.values
        i, k = argmax2(v)
        out.append(judge("conservation", stmt, src, v[i, k], 0.0, upper=True, time=ctx.times[i],
                         tolerance=tol, assumptions=ok,
                         note=f"worst at interface {k + 1}; " + tol_note if ok else "solver settings missing from attrs"))
    else:
        out.append(missing("conservation", stmt, src, "balance_drift"))
    drift_end = np.asarray(obs.balance_drift(ctx.final, ctx.problem, ctx.initial))
    out.append(judge("conservation_final_weights", stmt + " (recomputed from the stored initial and final weights)",
                     src, drift_end.max(), 0.0, upper=True, time=ctx.t_end, tolerance=tol, assumptions=ok,
                     note=f"worst at interface {int(drift_end.argmax()) + 1}; " + tol_note if ok else "solver settings missing"))
    return out


def final_consistency(ctx: RunContext) -> Check:
    """The stored final weights reproduce the recorded final excess risk."""
    ds, problem = ctx.ds, ctx.problem
    name = "final_weights_consistent"
    src = "consistency of the stored trajectory (w(W_final) is the recorded end point)"
    w = np.asarray(end_to_end(ctx.final))
    pi = ds.pi_star.values
    lam = float(ds.attrs["lam"])
    if problem is not None and "excess_risk" in ds:
        rec = float(ds.excess_risk.values[-1])
        val = float(problem.excess_risk(jnp.asarray(w)))
        tol = excess_risk_tolerance(rec, val, float(problem.Lam), float(np.sum(pi**2)))
        return judge(name, "R(W_final) − R_min recomputed from the stored weights equals the recorded final excess risk",
                     src, abs(val - rec), 0.0, upper=True, time=ctx.t_end, tolerance=tol,
                     note=f"recomputed {val:.3g}, recorded {rec:.3g}; tolerance 1e-8 relative (both are the same formula)")
    if "excess_risk" in ds and lam > 0:
        rec = float(ds.excess_risk.values[-1])
        dist = float(np.linalg.norm(w - pi))
        bound = math.sqrt(max(rec, 0.0) / lam)
        return judge(name, "‖w(W_final) − π*‖ ≤ √((R − R_min)/λ) with the recorded final excess risk",
                     src, dist, bound, upper=True, time=ctx.t_end, tolerance=distance_tolerance(bound, np.linalg.norm(pi)),
                     note="(w − π*)ᵀΣ̂(w − π*) ≥ λ‖w − π*‖²")
    return missing(name, "stored final weights reproduce the recorded final excess risk", src, "excess_risk")


def _risk_series(ds) -> np.ndarray | None:
    """The recorded excess risk (free of cancellation), else the risk, else None."""
    if "excess_risk" in ds:
        return ds.excess_risk.values
    return ds.risk.values if "risk" in ds else None


def monotone_risk(ctx: RunContext) -> Check:
    """R is non-increasing between saves, up to what the local errors can add."""
    ds = ctx.ds
    src = "energy identity dR/dt = −‖∇R‖², theory.md §6 (classical)"
    stmt = "R(t) is non-increasing: R(t_{i+1}) − R(t_i) ≤ 0 between saves"
    series, excess = _risk_series(ds), "excess_risk" in ds
    if series is None:
        return missing("monotone_risk", stmt, src, "risk or excess_risk")
    g = ds.grad_norm_sq.values if "grad_norm_sq" in ds else None
    rise = np.diff(series)
    G = math.sqrt(float(np.nanmax(g))) if g is not None else gradient_norm_stand_in(ctx.bounds["S_upper"], series[0])
    scale = np.abs(series[1:]) + (float(ctx.attrs.get("R_min", 0.0)) if not excess else 0.0)
    tol = risk_tolerance(ctx.N, ctx.delta, G, scale)
    j = int(np.argmax(rise - tol))
    return judge("monotone_risk", stmt, src, rise[j], 0.0, upper=True, time=ctx.times[j + 1], tolerance=tol[j],
                 assumptions=ctx.has_steps,
                 note=f"tolerance {SAFETY:g}·N·max‖∇R‖·δ + round-off: a local error e moves R by ≤ ‖∇R‖‖e‖"
                 + ("; increments of the cancellation-free excess risk" if excess else ""))


def _resolved_intervals(g: np.ndarray) -> np.ndarray:
    """Save intervals on which ‖∇R‖² may be taken to be monotone.

    Saved values cannot exclude a bump of ‖∇R‖² between two saves (the plateau escape
    can fit between two of them). An interval counts as resolved when ‖∇R‖² changes by
    less than RESOLVED× across it and across both neighbours; on such an interval
    ‖∇R‖² is taken to be monotone, so the integral lies in [Δt·min, Δt·max]. Intervals
    next to a saved extremum of ‖∇R‖² are skipped: it is not monotone there.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(g[:-1], g[1:]) / np.minimum(g[:-1], g[1:])
    smooth = np.isfinite(ratio) & (ratio <= RESOLVED)
    resolved = smooth.copy()
    resolved[1:] &= smooth[:-1]
    resolved[:-1] &= smooth[1:]
    sign = np.sign(np.diff(g))
    extremum = np.zeros(len(g), bool)
    extremum[1:-1] = sign[:-1] * sign[1:] <= 0  # a saved extremum: the true one may lie on either side
    return resolved & ~(extremum[:-1] | extremum[1:])


def energy_identity(ctx: RunContext) -> Check:
    """R(t_i) − R(t_{i+1}) = ∫‖∇R‖² dt, bracketed on the save intervals that resolve it."""
    ds, times = ctx.ds, ctx.times
    name = "energy_identity"
    src = "energy identity R(t_i) − R(t_{i+1}) = ∫ ‖∇R‖² dt, theory.md §6 (classical)"
    stmt = ("on intervals between saves where the saved ‖∇R‖² is monotone and varies slowly, Δt·min ≤ "
            "R(t_i) − R(t_{i+1}) ≤ Δt·max of ‖∇R‖² at the two ends")
    series = _risk_series(ds)
    g = ds.grad_norm_sq.values if "grad_norm_sq" in ds else None
    if series is None or g is None:
        return missing(name, stmt, src, "grad_norm_sq and risk/excess_risk")
    drop = series[:-1] - series[1:]
    dt = np.diff(times)
    lo = dt * np.minimum(g[:-1], g[1:])
    hi = dt * np.maximum(g[:-1], g[1:])
    resolved = _resolved_intervals(g) & np.isfinite(drop) & (dt > 0)
    slack = risk_tolerance(ctx.N, ctx.delta, np.sqrt(np.maximum(g[:-1], g[1:])), np.abs(series[:-1]))
    above, below = drop - hi, lo - drop
    # the worst interval relative to its own scale (drops span twenty decades)
    worst = np.where(resolved, (np.maximum(above, below) - slack) / (hi + slack), -np.inf)
    n_res = int(resolved.sum())
    total = float(series[0] - series[-1])
    covered = float(drop[resolved].sum()) / total if total > 0 else math.nan
    note = (f"{n_res} of {len(dt)} intervals resolved (‖∇R‖² within ×{RESOLVED:g} across each and its neighbours, "
            "no saved extremum at either end), "
            f"covering {covered:.3g} of the total risk drop; the rest (typically the plateau escape) is not "
            f"resolved by the saves and not checked. Slack {SAFETY:g}·N·max‖∇R‖·δ + round-off per interval")
    if n_res == 0:
        return Check(name, stmt, src, "trend only", note=note)
    j = int(np.argmax(worst))
    upper = above[j] >= below[j]
    return judge(name, stmt, src, drop[j], hi[j] if upper else lo[j], upper=upper, time=times[j + 1],
                 tolerance=slack[j], assumptions=ctx.has_steps, note=note)


def pl_pointwise(ds, times) -> Check:
    """‖∇R‖²/(R − R_min) ≥ 4λ‖pᵀW_L⋯W_2‖² at every save (GF and GD trajectories alike)."""
    name = "pl_pointwise"
    src = "PL inequality behind the Lemma, theory.md §4 (holds at every W, any init)"
    stmt = "‖∇R‖²/(R − R_min) ≥ 4λ‖pᵀW_L⋯W_2‖² at every save"
    if "pl_ratio" not in ds or "pl_lower_bound" not in ds:
        return missing(name, stmt, src, "pl_ratio and pl_lower_bound")
    r, lb = ds.pl_ratio.values, ds.pl_lower_bound.values
    ok = np.isfinite(r) & np.isfinite(lb) & (lb > 0)
    if "excess_risk" in ds:
        ok &= ds.excess_risk.values > 0
    if not ok.any():
        return Check(name, stmt, src, "assumption not met", note="no save with a finite PL ratio")
    rel = np.where(ok, r / np.where(ok, lb, 1.0) - 1.0, np.inf)
    j = int(np.argmin(rel))
    return judge(name, stmt, src, r[j], lb[j], upper=False, time=times[j], tolerance=PL_RTOL * lb[j],
                 note="margin at the tightest save; tolerance 1e-9 relative (both sides are exact formulas, "
                 f"only round-off separates them); relative slack there {rel[j]:.3g}")


def final_sharpness_checks(ctx: RunContext) -> list[Check]:
    """S(W_final) against S_lower and, at a converged run, against the norm bound (§2)."""
    attrs, b = ctx.attrs, ctx.bounds
    src = "Theorem (sharpness of minimizers), theory.md §2"
    S_fin, how = ctx.final_sharpness
    excess = float(ctx.ds.excess_risk.values[-1]) if "excess_risk" in ctx.ds else math.nan
    dist = math.sqrt(max(excess, 0.0) / float(attrs["lam"])) if ctx.full_rank and np.isfinite(excess) else math.inf
    norm = float(attrs["pi_star_norm"])
    rel = sharpness_rtol(dist, ctx.depth, float(attrs["Lam"]), float(attrs["a"]), norm)
    at_minimizer = ctx.converged and ctx.full_rank
    why = "" if at_minimizer else (f"status {ctx.status}" if not ctx.converged else "Σ̂ not full rank")
    stmt = "S(W_final) ≥ S_lower = 2cLa (every global minimizer)"
    if S_fin is None:
        return [missing("sharpness_lower_bound", stmt, src, "sharpness (or pass the Problem)")]
    out = [judge("sharpness_lower_bound", stmt, src, S_fin, b["S_lower"], upper=False, time=ctx.t_end,
                 tolerance=rel * b["S_lower"], assumptions=at_minimizer,
                 note=f"S {how}; S/S_lower = {S_fin / b['S_lower']:.4g}; tolerance first order in "
                 f"‖w − π*‖ ≤ {dist:.2g}" + (f"; {why}" if why else ""))]
    if at_minimizer:
        final = ctx.final
        nb = norm_sharpness_bound(final.layers(), attrs)
        slides = slides_norm_sharpness_bound(final.layers(), attrs, float(np.linalg.norm(np.asarray(final.p))))
        out.append(judge("sharpness_norm_bound", "S(W) ≥ 2a‖π*‖² Σ_k ‖W_k‖_F^{−2} at a global minimizer W "
                         "(derived in gflow.theory: the direction (W_k/‖W_k‖_F)_k)", "derived from theory.md §2 "
                         "(Hessian 2JᵀΣ̂J at a minimizer)", S_fin, nb, upper=False, time=ctx.t_end, tolerance=rel * nb,
                         note=f"S {how}; the slides' form 2a‖π*‖^{{2−1/L}}‖p‖^{{1/L}}Σ1/‖W_k‖_F = {slides:.6g} "
                         "(reported only; exponents unverified)"))
    return out
