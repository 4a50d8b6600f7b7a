"""Figures of gradient descent beside gradient flow (theory.md §3).

Final sharpness against η with 2/η, S_lower and S_upper; sharpness against time for GF and
each GD run; final distance to π*; divergence per η; distance to the flow. Each takes the
GD Dataset of `gflow.descent.run` (and the GF one where it says) and returns a Figure;
[`save_figures`][] writes them all as PNG.
"""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

from .base import new_figure, write_figures


def _mark_eta_crit(ax, gd: xr.Dataset):
    """A dotted vertical line at η_crit = 2/S_lower."""
    ax.axvline(gd.attrs["eta_crit"], color="C3", ls=":", label="η_crit = 2/S_lower")


def sharpness_vs_step_size(gd: xr.Dataset):
    """Final sharpness of every converged GD run against η, with 2/η, S_lower, S_upper."""
    fig, (ax,) = new_figure(width=6)
    etas = gd.step_size.values
    for i, eta in enumerate(etas):
        conv = gd.status.values[i] == "converged"
        S = gd.final_sharpness.values[i]
        ax.scatter(np.full(conv.sum(), eta), S[conv], s=12, color="C0", alpha=0.6,
                   label="GD, converged" if i == 0 else None)
    grid = np.geomspace(etas.min() / 1.5, etas.max() * 1.5, 200)
    ax.plot(grid, 2 / grid, "k--", label="2/η")
    ax.axhline(gd.attrs["S_lower"], color="C3", label="S_lower = 2cLa")
    ax.axhline(gd.attrs["S_upper"], color="C2", label="S_upper")
    _mark_eta_crit(ax, gd)
    ax.set(xscale="log", yscale="log", xlabel="step size η", ylabel="final sharpness S",
           title="Sharpness at the end of GD")
    ax.legend(fontsize=8)
    return fig


def sharpness_vs_time(gf: xr.Dataset, gd: xr.Dataset):
    """Sharpness along GF and along each GD run (recorded, else its final value at t = steps·η).

    Log axes; each dashed line 2/η is the stability limit of its GD run, drawn only where it
    falls near the sharpness values (a line at 2/η = 1000 would flatten everything else).
    """
    fig, (ax,) = new_figure(width=6.5)
    values = []
    for i, eta in enumerate(gd.step_size.values):
        color = f"C{i % 10}"
        t = gd.time.values[i]
        if "sharpness" in gd:
            s = gd.sharpness.values[i, 0]
            ok = (t > 0) & np.isfinite(s)
            ax.plot(t[ok], s[ok], color=color, lw=1.2, label=f"GD η = {eta:.3g}")
            values.append(s[ok])
        final = gd.final_sharpness.values[i, 0]
        ax.scatter([float(gd.steps.values[i]) * eta], [final], color=color, marker="o", zorder=3,
                   label=None if "sharpness" in gd else f"GD η = {eta:.3g} (final)")
        values.append(np.atleast_1d(final))
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
            ax.axhline(2 / eta, color=f"C{i % 10}", ls="--", lw=0.8)
    ax.axhline(gd.attrs["S_lower"], color="C3", lw=1.5, ls=":", label="S_lower")
    ax.set(xscale="log", yscale="log", ylim=(lo, hi), xlabel="time t (GD: t = kη)", ylabel="sharpness S",
           title="Sharpness along GF and GD (dashed: 2/η)")
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


def distance_to_flow_figure(gd: xr.Dataset):
    """‖W_GD(kη) − W_GF(kη)‖ over time, one line per step size (first seed)."""
    fig, (ax,) = new_figure(width=6)
    for i, eta in enumerate(gd.step_size.values):
        d = gd.distance_to_flow.values[i, 0]
        t = gd.time.values[i]
        ok = np.isfinite(d) & (t > 0) & (d > 0)
        ax.plot(t[ok], d[ok], label=f"η = {eta:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="time t = kη", ylabel="distance to GF",
           title="GD against GF at matched times")
    ax.legend(fontsize=8)
    return fig


def figures(gf: xr.Dataset, gd: xr.Dataset) -> dict:
    """All comparison figures, by file stem."""
    out = {
        "gd_sharpness_vs_step_size": sharpness_vs_step_size(gd),
        "gd_sharpness_vs_time": sharpness_vs_time(gf, gd),
        "gd_distance_to_pi_star": distance_vs_step_size(gd),
        "gd_divergence": divergence_vs_step_size(gd),
    }
    if "distance_to_flow" in gd:
        out["gd_distance_to_flow"] = distance_to_flow_figure(gd)
    return out


def save_figures(gf: xr.Dataset, gd: xr.Dataset, folder: str | os.PathLike) -> list[str]:
    """Write [`figures`][] as PNG files in `folder` (atomically); returns their paths."""
    return write_figures(figures(gf, gd), folder)
