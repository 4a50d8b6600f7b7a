"""A gradient-flow trajectory held against theory.md: the identities every GF obeys
(conservation, monotone risk, energy, pointwise PL), the stored end point, and the Hessian
and sharpness at the end; the small-scale and residual statements live in their own
modules."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .. import observables as obs
from ..models import Residual, end_to_end
from ..solver import ENERGY
from .closed_forms import layer_arrays, norm_sharpness_bound, slides_norm_sharpness_bound
from .context import RunContext
from .curvature_checks import curvature_checks
from .dynamics_checks import finite_step_checks
from .residual_checks import residual_checks
from .small_scale_checks import small_scale_checks
from .tolerances import (
    PL_RTOL,
    SAFETY,
    conservation_tolerance,
    distance_tolerance,
    energy_tolerance,
    excess_risk_tolerance,
    product_roundoff,
    risk_increase_tolerance,
    sharpness_rtol,
)
from .verdict import Check, judge, judge_worst, missing, not_applicable

_CLASSICAL = "energy identity dR/dt = −‖∇R‖², theory.md §6 (classical)"
_PL_WHY = "the bound needs R_min and the product pᵀW_L⋯W_2 of a linear network (theory.md §4)"


def check_flow(ctx: RunContext) -> list[Check]:
    """Every check that applies to the GF trajectory of `ctx`, in a stable order:
    conservation, end point, monotone risk, energy identity, pointwise PL, the small-scale
    Lemma and corollary, the final sharpness and Hessian, and (residual networks) §5."""
    out = conservation(ctx)
    out.append(final_consistency(ctx))
    out.append(monotone_risk(ctx))
    out.append(energy_identity(ctx))
    out.append(pl_pointwise(ctx.ds, ctx.times, None if ctx.is_linear else ctx.linear_only(_PL_WHY)))
    out.extend(small_scale_checks(ctx))
    out.extend(final_sharpness_checks(ctx))
    out.extend(curvature_checks(ctx))
    if isinstance(ctx.initial, Residual):
        out.extend(residual_checks(ctx))
    return finite_step_checks(ctx, out)


def _interval_where(ctx: RunContext, label: str):
    """Describes the save interval (and the interface or layer) that decided a check."""

    def where(idx):
        head = f"interval ({ctx.times[idx[0]]:.3g}, {ctx.times[idx[0] + 1]:.3g}]"
        return head + (f", {label} {idx[1] + 1}" if len(idx) > 1 else "")

    return where


def conservation(ctx: RunContext) -> list[Check]:
    """D_k(t) = D_k(0): each save interval's change within that interval's step budget, and
    the stored end point within the whole run's (L ≥ 2)."""
    if ctx.depth < 2:
        return []
    src = "conservation law of GF, theory.md §4 (exact along GF, any init)"
    stmt = "‖D_k(t) − D_k(0)‖_F = 0 for D_k = W_{k+1}ᵀW_{k+1} − W_kW_kᵀ, up to the solver's accepted local errors"
    if not ctx.is_linear:
        why = ctx.linear_only("GELU is not homogeneous, so there is no conservation law (theory.md §10)")
        return [not_applicable(n, stmt, src, why) for n in ("conservation", "conservation_final_weights")]
    ok, why = ctx.has_steps, "" if ctx.has_steps else "solver settings missing from attrs"
    budget = (f"budget {SAFETY:g}·n(2‖W‖δ + δ²) per interval of n steps, δ = √(P+1)(atol + rtol·M) = "
              f"{ctx.delta:.3g}, ‖W‖ ≤ {ctx.weight_max:.3g}")
    out = []
    if "balance_drift" in ctx.ds:
        rise = np.diff(ctx.ds.balance_drift.values, axis=0)
        tol = conservation_tolerance(ctx.interval_steps, ctx.weight_max, ctx.delta)[:, None]
        out.append(judge_worst("conservation", stmt + " (per save interval: |Δ drift| ≤ budget)", src, rise, 0.0,
                               tol, upper=True, times=ctx.times[1:], assumptions=ok,
                               where=_interval_where(ctx, "interface"), note=why or budget))
    else:
        out.append(missing("conservation", stmt, src, "balance_drift"))
    drift_end = ctx.final_drift
    out.append(judge_worst("conservation_final_weights", stmt + " (recomputed from the stored initial and final "
                           "weights, within the whole run's budget)", src, drift_end, 0.0,
                           conservation_tolerance(ctx.N + 2, ctx.weight_max, ctx.delta), upper=True,
                           time=ctx.t_end, assumptions=ok, where=lambda i: f"interface {i[0] + 1}", note=why or budget))
    return out


def final_consistency(ctx: RunContext) -> Check:
    """The stored final weights reproduce the recorded final excess risk (the final risk for
    a network with an activation)."""
    ds, problem = ctx.ds, ctx.problem
    name = "final_weights_consistent"
    src = "consistency of the stored trajectory (w(W_final) is the recorded end point)"
    if not ctx.is_linear:
        return _final_risk_consistency(ctx, name)
    w = np.asarray(end_to_end(ctx.final, unroll=True))  # eager: a scan would compile at each call
    pi = ds.pi_star.values
    lam = float(ds.attrs["lam"])
    if problem is not None and "excess_risk" in ds:
        rec = float(ds.excess_risk.values[-1])
        val = float(problem.excess_risk(jnp.asarray(w)))
        w_error = product_roundoff(ctx.initial.widths, max(np.linalg.norm(w), np.linalg.norm(pi)))
        tol = excess_risk_tolerance(rec, val, float(problem.Lam), float(np.sum(pi**2)), w_error)
        return judge(name, "R(W_final) − R_min recomputed from the stored weights equals the recorded final excess risk",
                     src, abs(val - rec), 0.0, upper=True, time=ctx.t_end, tolerance=tol,
                     note=f"recomputed {val:.3g}, recorded {rec:.3g}; tolerance 1e-8 relative (both are the same "
                     f"formula) plus the round-off of w, ‖Δw‖ ≤ {w_error:.2g}")
    if "excess_risk" in ds and lam > 0:
        rec = float(ds.excess_risk.values[-1])
        dist = float(np.linalg.norm(w - pi))
        bound = math.sqrt(max(rec, 0.0) / lam)
        return judge(name, "‖w(W_final) − π*‖ ≤ √((R − R_min)/λ) with the recorded final excess risk",
                     src, dist, bound, upper=True, time=ctx.t_end, tolerance=distance_tolerance(bound, np.linalg.norm(pi)),
                     note="(w − π*)ᵀΣ̂(w − π*) ≥ λ‖w − π*‖²")
    return missing(name, "stored final weights reproduce the recorded final excess risk", src, "excess_risk")


def _final_risk_consistency(ctx: RunContext, name: str) -> Check:
    """R(W_final) recomputed from the stored weights and the data equals the recorded final risk."""
    stmt = "R(W_final) recomputed from the stored weights equals the recorded final risk"
    src = "consistency of the stored trajectory (W_final is the recorded end point)"
    if ctx.problem is None or "risk" not in ctx.ds:
        return missing(name, stmt, src, "risk, and the data (pass the Problem)")
    rec = float(ctx.ds.risk.values[-1])
    val = float(obs.risk_of(ctx.final, ctx.problem))
    return judge(name, stmt, src, abs(val - rec), 0.0, upper=True, time=ctx.t_end,
                 tolerance=excess_risk_tolerance(rec, val, float(ctx.problem.Lam), float(ctx.attrs["pi_star_norm"]) ** 2),
                 note=f"recomputed {val:.3g}, recorded {rec:.3g}; tolerance 1e-8 relative (both are the same formula)")


def _risk_series(ds) -> np.ndarray | None:
    """The recorded excess risk (free of cancellation), else the risk, else None."""
    if "excess_risk" in ds:
        return ds.excess_risk.values
    return ds.risk.values if "risk" in ds else None


def monotone_risk(ctx: RunContext) -> Check:
    """R is non-increasing: each save interval's rise within what its steps' local errors
    can add."""
    ds = ctx.ds
    stmt = "R(t) is non-increasing: R(t_{i+1}) − R(t_i) ≤ 0 between saves"
    series = _risk_series(ds)
    if series is None or ctx.grad_max is None:
        return missing("monotone_risk", stmt, _CLASSICAL, "risk or excess_risk, and grad_norm_sq (the tolerance's scale)")
    formed_from_r_min = ctx.is_linear and "excess_risk" not in ds  # R = R_min + excess risk
    scale = np.abs(series[1:]) + (float(ctx.attrs.get("R_min", 0.0)) if formed_from_r_min else 0.0)
    tol = risk_increase_tolerance(ctx.interval_steps, ctx.grad_max, ctx.delta, scale)
    return judge_worst("monotone_risk", stmt, _CLASSICAL, np.diff(series), 0.0, tol, upper=True, times=ctx.times[1:],
                       assumptions=ctx.has_steps, where=_interval_where(ctx, ""),
                       note=f"budget {SAFETY:g}·n·max‖∇R‖·δ per interval of n steps (a local error e moves R by "
                       "≤ ‖∇R‖‖e‖) + round-off" + ("; increments of the cancellation-free excess risk"
                                                   if "excess_risk" in ds else ""))


def energy_identity(ctx: RunContext) -> Check:
    """R(0) − R(t) = E(t) at every save, E = ∫‖∇R‖² integrated with the flow."""
    ds = ctx.ds
    stmt = "R(0) − R(t) = E(t) = ∫₀ᵗ ‖∇R‖² ds at every save (E integrated with the flow as an extra state)"
    src = "energy identity, theory.md §6 and §8"
    series = _risk_series(ds)
    if series is None or ENERGY not in ds or ctx.grad_max is None:
        return missing("energy_identity", stmt, src, f"risk or excess_risk, {ENERGY} and grad_norm_sq")
    energy = ds[ENERGY].values
    gap = np.abs((series[0] - series) - energy)
    tol = energy_tolerance(ctx.steps_to_save, ctx.grad_max, ctx.delta, ctx.delta_energy, ctx.sharp_max,
                           np.abs(series[0]) + np.abs(energy))
    drop = float(series[0] - series[-1])
    return judge_worst("energy_identity", stmt, src, gap, 0.0, tol, upper=True, times=ctx.times,
                       assumptions=ctx.has_steps,
                       note=f"all {gap.size} saves, covering the whole risk drop {drop:.4g}; budget "
                       f"{SAFETY:g}·n(max‖∇R‖·δ + ½S·δ² + δ_E) after n steps (R + E is conserved by the exact flow)")


def pl_pointwise(ds, times, not_for: str | None = None) -> Check:
    """‖∇R‖²/(R − R_min) ≥ 4λ‖pᵀW_L⋯W_2‖² at every save (GF and GD trajectories alike);
    "not applicable" with the note `not_for` when given (a network with an activation)."""
    name = "pl_pointwise"
    src = "PL inequality behind the Lemma, theory.md §4 (holds at every W, any init)"
    stmt = "‖∇R‖²/(R − R_min) ≥ 4λ‖pᵀW_L⋯W_2‖² at every save"
    if not_for is not None:
        return not_applicable(name, stmt, src, not_for)
    if "pl_ratio" not in ds or "pl_lower_bound" not in ds:
        return missing(name, stmt, src, "pl_ratio and pl_lower_bound")
    r, lb = ds.pl_ratio.values, ds.pl_lower_bound.values
    ok = np.isfinite(r) & np.isfinite(lb) & (lb > 0)
    if "excess_risk" in ds:
        ok &= ds.excess_risk.values > 0
    rel = r[ok] / lb[ok] - 1.0
    note = (f"{int(ok.sum())} of {ok.size} saves have a finite ratio and a positive bound (the others have "
            "R = R_min or a vanishing bound); tolerance 1e-9 relative (both sides are exact formulas)")
    return judge_worst(name, stmt, src, r[ok], lb[ok], PL_RTOL * lb[ok], upper=False, times=np.asarray(times)[ok],
                       where=lambda i: f"relative slack {rel[i]:.3g}", note=note)


def final_sharpness_checks(ctx: RunContext) -> list[Check]:
    """S(W_final) against S_lower and, at a converged run, against the norm bound (§2)."""
    attrs, b = ctx.attrs, ctx.bounds
    src = "Theorem (sharpness of minimizers), theory.md §2"
    if not ctx.is_linear:
        why = ctx.linear_only("S_lower and the norm bound concern the minimizers of linear networks; "
                              "2La is a reference line only (theory.md §10)")
        return [not_applicable(n, "S(W_final) ≥ S_lower = 2cLa, and the norm bound (every global minimizer)", src, why)
                for n in ("sharpness_lower_bound", "sharpness_norm_bound")]
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
    ratios = f"S/S_lower = {S_fin / b['S_lower']:.4g}" + (
        f", S/S_balanced = {S_fin / b['S_balanced']:.4g}" if "S_balanced" in b else "")
    out = [judge("sharpness_lower_bound", stmt, src, S_fin, b["S_lower"], upper=False, time=ctx.t_end,
                 tolerance=rel * b["S_lower"], assumptions=at_minimizer,
                 note=f"S {how}; {ratios}; tolerance first order in ‖w − π*‖ ≤ {dist:.2g}" + (f"; {why}" if why else ""))]
    if at_minimizer:
        layers = layer_arrays(ctx.final)
        nb = norm_sharpness_bound(layers, attrs)
        slides = slides_norm_sharpness_bound(layers, attrs, ctx.p_norm)
        out.append(judge("sharpness_norm_bound", "S(W) ≥ 2a‖π*‖² Σ_k ‖W_k‖_F^{−2} at a global minimizer W "
                         "(derived in gflow.theory: the direction (W_k/‖W_k‖_F)_k)", "derived from theory.md §2 "
                         "(Hessian 2JᵀΣ̂J at a minimizer)", S_fin, nb, upper=False, time=ctx.t_end, tolerance=rel * nb,
                         note=f"S {how}; the slides' form 2a‖π*‖^{{2−1/L}}‖p‖^{{1/L}}Σ1/‖W_k‖_F = {slides:.6g} "
                         "(reported only; exponents unverified)"))
    return out
