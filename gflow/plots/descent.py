"""Figures of gradient descent beside gradient flow (theory.md §3).

Final sharpness against η with 2/η, S_lower and S_upper; sharpness and risk against time
for GF and each GD run; final distance to π*; divergence per η; distance to the flow. Each
takes the GD Dataset of `gflow.descent.run` (and the GF one where it says) and returns a
Figure; [`save_figures`][] writes them all as PNG.

The continuous-time models of GD at a finite η (theory.md §11), when given (`flows`: the
trajectories of `gflow.compare.finite_step_flows`, by name), share the time axis: in the
color of their η, the modified flow dashed and the central flow dotted.
"""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

from .base import new_figure, write_figures

STYLES = {"modified": "--", "central": ":"}
"""Line style of each finite-step flow (GD solid, in the same color)."""


def _flows_at(flows: dict | None, eta: float):
    """(dynamics, trajectory) of the finite-step flows at step size η."""
    for ds in (flows or {}).values():
        if np.isclose(float(ds.attrs["step_size"]), eta, rtol=1e-12):
            yield str(ds.attrs["dynamics"]), ds


def _flow_sharpness(ds: xr.Dataset):
    """A flow's recorded top eigenvalue: its own eigensolver's (central), else `sharpness`."""
    for name in ("edge_sharpness", "sharpness"):
        if name in ds:
            return ds[name].values
    return None


def _mark_eta_crit(ax, gd: xr.Dataset):
    """A dotted vertical line at η_crit = 2/S_lower (a linear network's: theory.md §3)."""
    if gd.attrs.get("activation", "linear") == "linear":
        ax.axvline(gd.attrs["eta_crit"], color="C3", ls=":", label="η_crit = 2/S_lower")


def sharpness_vs_step_size(gd: xr.Dataset, flows: dict | None = None):
    """Final sharpness of every converged GD run against η, with 2/η, S_lower, S_upper, and
    the central flow's final sharpness (its prediction of GD's) when given."""
    fig, (ax,) = new_figure(width=6)
    etas = gd.step_size.values
    for i, eta in enumerate(etas):
        conv = gd.status.values[i] == "converged"
        S = gd.final_sharpness.values[i]
        ax.scatter(np.full(conv.sum(), eta), S[conv], s=12, color="C0", alpha=0.6,
                   label="GD, converged" if i == 0 else None)
    central = [(eta, float(_flow_sharpness(ds)[-1])) for eta in etas for dyn, ds in _flows_at(flows, eta)
               if dyn == "central"]
    if central:
        ax.plot(*zip(*central), "k:", marker="x", label="central flow (predicted S_final)")
    grid = np.geomspace(etas.min() / 1.5, etas.max() * 1.5, 200)
    ax.plot(grid, 2 / grid, "k--", label="2/η")
    if gd.attrs.get("activation", "linear") == "linear":  # bounds on S_min, the flattest minimizer's sharpness
        ax.axhline(gd.attrs["S_lower"], color="C3", label="S_lower = 2cLa ≤ S_min")
        ax.axhline(gd.attrs["S_upper"], color="C2", label="S_upper ≥ S_min (not a bound on S_final)")
    _mark_eta_crit(ax, gd)
    ax.set(xscale="log", yscale="log", xlabel="step size η", ylabel="final sharpness S",
           title="Sharpness at the end of GD")
    ax.legend(fontsize=8)
    return fig


def sharpness_vs_time(gf: xr.Dataset, gd: xr.Dataset, flows: dict | None = None):
    """Sharpness along GF, along each GD run (recorded, else its final value at t = steps·η)
    and along the finite-step flows.

    Log axes; each thin dash-dot line 2/η is the stability limit of its GD run, drawn only
    where it falls near the sharpness values (a line at 2/η = 1000 would flatten everything
    else).
    """
    fig, (ax,) = new_figure(width=6.5)
    values = []
    for i, eta in enumerate(gd.step_size.values):
        color = f"C{i % 10}"
        t = gd.time.values[i]
        if "sharpness" in gd:
            s = gd.sharpness.values[i, 0]
            ok = (t > 0) & np.isfinite(s)
            ax.plot(t[ok], s[ok], color=color, lw=0.8, alpha=0.7, label=f"GD η = {eta:.3g}")
            values.append(s[ok])
        final = gd.final_sharpness.values[i, 0]
        ax.scatter([float(gd.steps.values[i]) * eta], [final], color=color, marker="o", zorder=3,
                   label=None if "sharpness" in gd else f"GD η = {eta:.3g} (final)")
        values.append(np.atleast_1d(final))
        for dynamics, ds in _flows_at(flows, eta):
            s = _flow_sharpness(ds)
            if s is not None:
                t = ds.time.values
                ax.plot(t[t > 0], s[t > 0], color=color, ls=STYLES[dynamics], lw=2.2, zorder=5,
                        label=f"{dynamics} flow η = {eta:.3g}")
                values.append(s[t > 0])
    if "sharpness" in gf:
        s = gf.sharpness if "seed" not in gf.sharpness.dims else gf.sharpness.isel(seed=0)
        t = gf.time.values
        ax.plot(t[t > 0], s.values[t > 0], "k", lw=2.5, label="GF", zorder=4)
        values.append(s.values[t > 0])
    v = np.concatenate(values)
    v = v[np.isfinite(v) & (v > 0)]
    lo, hi = (v.min() / 2, v.max() * 3) if v.size else (1e-1, 1e3)
    for i, eta in enumerate(gd.step_size.values):
        if lo < 2 / eta < hi:
            ax.axhline(2 / eta, color=f"C{i % 10}", ls="-.", lw=0.6)
    if gd.attrs.get("activation", "linear") == "linear":
        ax.axhline(gd.attrs["S_lower"], color="C3", lw=1.5, ls=":", label="S_lower ≤ S_min")
    ax.set(xscale="log", yscale="log", ylim=(lo, hi), xlabel="time t (GD: t = kη)", ylabel="sharpness S",
           title="Sharpness along GF and GD (dash-dot: 2/η)")
    ax.legend(fontsize=7)
    return fig


def distance_vs_step_size(gd: xr.Dataset):
    """Final ‖w − π*‖² of every run that did not diverge, against η."""
    fig, (ax,) = new_figure(width=6)
    for i, eta in enumerate(gd.step_size.values):
        d = gd.final_distance_to_pi_star.values[i]
        d = d[np.isfinite(d)]
        ax.scatter(np.full(d.size, eta), np.maximum(d**2, 1e-32), s=12, color="C0", alpha=0.6)
    _mark_eta_crit(ax, gd)
    ax.set(xscale="log", yscale="log", xlabel="step size η", ylabel="final ‖w − π*‖²",
           title="Distance to π* at the end of GD (diverged runs left out)")
    ax.legend(fontsize=8)
    return fig


def divergence_vs_step_size(gd: xr.Dataset):
    """Fraction of runs that diverged, stalled or did not converge, per η."""
    fig, (ax,) = new_figure(width=6)
    etas = gd.step_size.values
    for k, status in enumerate(("diverged", "stalled", "not_converged")):
        frac = (gd.status.values == status).mean(axis=1)
        ax.plot(etas, frac, "o-", color=f"C{k + 3}", label=status)
    _mark_eta_crit(ax, gd)
    ax.set(xscale="log", ylim=(-0.05, 1.05), xlabel="step size η", ylabel="fraction of runs",
           title="GD failures per step size")
    ax.legend(fontsize=8)
    return fig


def risk_vs_time(gf: xr.Dataset, gd: xr.Dataset, flows: dict | None = None):
    """Excess risk R − R_min along GF, each GD run (first seed) and the finite-step flows;
    for the central flow its prediction of GD's risk averaged over the oscillations,
    R + ½⟨X, UᵀHU⟩ − R_min (theory.md §11). A network with an activation has no known
    R_min (theory.md §10): R itself."""
    fig, (ax,) = new_figure(width=6.5)
    linear = gd.attrs.get("activation", "linear") == "linear"
    r_min, curve = (float(gd.attrs["R_min"]), "excess_risk") if linear else (0.0, "risk")
    for i, eta in enumerate(gd.step_size.values):
        color = f"C{i % 10}"
        if curve in gd:
            t, e = gd.time.values[i], gd[curve].values[i, 0]
            ok = (t > 0) & np.isfinite(e) & (e > 0)
            ax.plot(t[ok], e[ok], color=color, lw=0.8, alpha=0.8, label=f"GD η = {eta:.3g}")
        for dynamics, ds in _flows_at(flows, eta):
            name = "predicted_risk" if dynamics == "central" else "risk"
            if name in ds:
                t, e = ds.time.values, ds[name].values - r_min
                ok = (t > 0) & (e > 0)
                ax.plot(t[ok], e[ok], color=color, ls=STYLES[dynamics], lw=2.2, zorder=5,
                        label=f"{dynamics} flow η = {eta:.3g}" + (" (predicted)" if dynamics == "central" else ""))
    if curve in gf:
        e = gf[curve] if "seed" not in gf[curve].dims else gf[curve].isel(seed=0)
        t = gf.time.values
        ok = (t > 0) & (e.values > 0)
        ax.plot(t[ok], e.values[ok], "k", lw=2.5, label="GF", zorder=4)
    ax.set(xscale="log", yscale="log", xlabel="time t (GD: t = kη)", ylabel="R − R_min" if linear else "R",
           title="Risk along GF, GD and the finite-step flows")
    ax.legend(fontsize=7)
    return fig


def distance_to_flow_figure(gd: xr.Dataset):
    """‖W_GD(kη) − W_flow(kη)‖ over time, one color per step size (first seed): to GF
    (solid), and to the modified (dashed) and central (dotted) flows when present."""
    fig, (ax,) = new_figure(width=6)
    lines = [("distance_to_flow", "-", "GF")] + [(f"distance_to_{k}", v, f"{k} flow") for k, v in STYLES.items()]
    for i, eta in enumerate(gd.step_size.values):
        t = gd.time.values[i]
        for name, style, what in lines:
            if name not in gd:
                continue
            d = gd[name].values[i, 0]
            ok = np.isfinite(d) & (t > 0) & (d > 0)
            ax.plot(t[ok], d[ok], color=f"C{i % 10}", ls=style, label=f"to {what}, η = {eta:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="time t = kη", ylabel="distance ‖W_GD − W_flow‖",
           title="GD against GF and the finite-step flows at matched times")
    ax.legend(fontsize=7)
    return fig


def figures(gf: xr.Dataset, gd: xr.Dataset, flows: dict | None = None) -> dict:
    """All comparison figures, by file stem (`flows`: finite-step flows by name)."""
    out = {
        "gd_sharpness_vs_step_size": sharpness_vs_step_size(gd, flows),
        "gd_sharpness_vs_time": sharpness_vs_time(gf, gd, flows),
        "gd_risk_vs_time": risk_vs_time(gf, gd, flows),
        "gd_divergence": divergence_vs_step_size(gd),
    }
    if "final_distance_to_pi_star" in gd:  # a network with an activation has no w
        out["gd_distance_to_pi_star"] = distance_vs_step_size(gd)
    if "distance_to_flow" in gd:
        out["gd_distance_to_flow"] = distance_to_flow_figure(gd)
    return out


def save_figures(gf: xr.Dataset, gd: xr.Dataset, folder: str | os.PathLike, flows: dict | None = None) -> list[str]:
    """Write [`figures`][] as PNG files in `folder` (atomically); returns their paths."""
    return write_figures(figures(gf, gd, flows), folder)
