"""Gradient-descent runs held against theory.md §2–§3: linear stability S ≤ 2/η at the
runs that converge, S ≥ S_lower, and no convergence above η_crit. The last two concern
linear networks: for a network with an activation they say "not applicable"."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from ..problem import Problem, is_full_rank
from ..trajectory import BALANCE_RESIDUAL, MAX_WEIGHT_SQ
from .closed_forms import bounds
from .flow_checks import pl_pointwise
from .tolerances import GD_RTOL, gd_balance_tolerance
from .verdict import Check, judge, judge_worst, missing, not_applicable

_LINEAR_ONLY = ("the network has {} activations: S_lower bounds the minimizers of linear networks; "
                "2La and η_crit = 2/S_lower are reference values only (theory.md §10)")


def check_descent(ds: xr.Dataset, problem: Problem | None = None) -> list[Check]:
    """Checks for a GD Dataset: per-run `final_sharpness`, `step_size`, `status` when present
    (any shape; they are broadcast together), else a single run described by attrs."""
    out = []
    if "pl_ratio" in ds and "time" in ds.dims:
        out.append(pl_pointwise(ds, ds.time.values))
    if BALANCE_RESIDUAL in ds:
        out.append(gd_conservation(ds))
    eta, S, status = _descent_runs(ds)
    if eta is None or status is None:
        out.append(missing("gd_stability", "S(W_final) ≤ 2/η for GD runs that converge", "linear stability of GD",
                           "step_size and status"))
        return out
    conv = status == "converged"
    src = "linear stability of GD at a minimizer (classical), theory.md §3"
    if S is not None and conv.any():
        r = np.where(conv, S * eta / 2.0, -np.inf)
        j = int(np.argmax(r))
        out.append(judge("gd_stability", "S(W_final) ≤ 2/η for every converged GD run", src, S[j], 2.0 / eta[j],
                         upper=True, tolerance=GD_RTOL * 2.0 / eta[j],
                         note=f"worst run: η = {eta[j]:.4g}, S·η/2 = {r[j]:.4g}; tolerance 2% (finite-step "
                         f"convergence and an iterative sharpness estimate); {int(conv.sum())} converged runs"))
    elif S is None:
        out.append(missing("gd_stability", "S(W_final) ≤ 2/η for GD runs that converge", src, "final_sharpness"))
    return out + _linear_bounds(ds, eta, S, conv)


def _linear_bounds(ds: xr.Dataset, eta, S, conv) -> list[Check]:
    """S_final ≥ S_lower at the converged runs and no convergence above η_crit: statements
    about linear networks ("not applicable" for a network with an activation)."""
    attrs = ds.attrs
    p_norm = float(np.linalg.norm(ds["p"].values)) if "p" in ds else 1.0
    b = bounds(attrs, int(attrs["depth"]), p_norm)
    full_rank = is_full_rank(attrs["lam"], attrs["Lam"])
    lower = ("sharpness_lower_bound", "S(W_final) ≥ S_lower = 2cLa for every converged GD run",
             "Theorem (sharpness of minimizers), theory.md §2")
    crit = ("gd_fails_above_eta_crit", f"GD with η > η_crit = 2/S_lower = {b['eta_crit']:.4g} does not converge",
            "Damian, Nichani & Lee reading, theory.md §3 (S_min ≥ S_lower)")
    activation = attrs.get("activation", "linear")
    if activation != "linear":
        why = _LINEAR_ONLY.format(activation)
        return [not_applicable(*lower, why), not_applicable(*crit, why)]
    out = []
    if S is not None and conv.any():
        rr = np.where(conv, S / b["S_lower"], np.inf)
        j = int(np.argmin(rr))
        out.append(judge(*lower, S[j], b["S_lower"], upper=False, tolerance=GD_RTOL * b["S_lower"], assumptions=full_rank,
                         note=f"worst run: η = {eta[j]:.4g}, S/S_lower = {rr[j]:.4g}; tolerance 2% (an iterative sharpness estimate "
                         "underestimates; runs stop near, not at, a minimizer)"))
    above = eta > b["eta_crit"]
    bad = above & conv
    out.append(Check(*crit, ("violated" if bad.any() else "holds") if full_rank else "assumption not met",
                     observed=float(eta[bad].min()) if bad.any() else (float(eta[above].min()) if above.any() else None),
                     bound=b["eta_crit"],
                     note=f"{int(above.sum())} runs above η_crit, {int(bad.sum())} of them converged"))
    return out


def gd_conservation(ds: xr.Dataset) -> Check:
    """D_k(K) − D_k(0) = η²Σ_{j<K}(G_{k+1}ᵀG_{k+1} − G_kG_kᵀ) at every record of every run that
    has not diverged: an exact identity of GD on a product network, so only round-off may
    separate the two sides."""
    stmt = "one GD step changes D_k by exactly η²(G_{k+1}ᵀG_{k+1} − G_kG_kᵀ): the recorded D_k(t) − D_k(0) equals the sum"
    src = "GD and the conservation law, theory.md §8"
    res = ds[BALANCE_RESIDUAL].transpose("step_size", "seed", "record", "interface").values
    wsq = ds[MAX_WEIGHT_SQ].transpose("step_size", "seed", "record").values[..., None]
    steps = ds["step"].values[:, None, :, None]
    width = max(json.loads(ds.attrs["widths"])) if "widths" in ds.attrs else 1
    tol = gd_balance_tolerance(steps, width, wsq)
    ok = np.isfinite(res) & np.isfinite(np.broadcast_to(tol, res.shape))
    res, tol = res[ok], np.broadcast_to(tol, ok.shape)[ok]
    drift = f"; the drift itself reaches {float(np.nanmax(ds.balance_drift.values)):.3g}" if "balance_drift" in ds else ""
    return judge_worst("gd_conservation", stmt, src, res, 0.0, tol, upper=True,
                       note=f"{res.size} records of runs that had not diverged; tolerance "
                       f"SAFETY·(K + 1)·3d·ε_mach·max‖W‖² (round-off only){drift}")


def _descent_runs(ds: xr.Dataset):
    """(η, S or None, status) per run as flat numpy arrays broadcast together, from the
    Dataset's variables or, for a single run, its attrs; (None, None, None) when η or
    the status is missing."""

    def get(name, *alts):
        for n in (name, *alts):
            if n in ds.variables:
                return ds[n]
        return None

    eta = get("step_size", "eta")
    S = get("final_sharpness")
    status = get("status")
    if eta is None and "step_size" in ds.attrs:
        eta = xr.DataArray(float(ds.attrs["step_size"]))
    if S is None and "sharpness" in ds and "time" in ds.dims and ds.sharpness.ndim == 1:
        S = ds.sharpness.isel(time=-1)
    if status is None and "status" in ds.attrs:
        status = xr.DataArray(str(ds.attrs["status"]))
    if eta is None or status is None:
        return None, None, None
    arrays = [eta, status] + ([S] if S is not None else [])
    arrays = xr.broadcast(*arrays)
    eta_v = np.asarray(arrays[0].values, float).ravel()
    st = np.asarray(arrays[1].values).ravel()
    st = np.array([s.decode() if isinstance(s, bytes) else str(s) for s in st])
    S_v = np.asarray(arrays[2].values, float).ravel() if S is not None else None
    return eta_v, S_v, st
