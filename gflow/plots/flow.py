"""Figures of one gradient-flow trajectory, each observable next to its theoretical line.

Every function takes a trajectory Dataset and returns a matplotlib Figure, made without
pyplot (no global state, any backend). Time is on a log axis (plateaus span decades), so
t = 0 is left out. A run that switched clocks (`clock = "arclength"`) gets a second panel
over t − t_switch, where the escape and convergence happen (in absolute time they are all
at t_switch to float64 precision). [`save_figures`][] writes those whose observables were
recorded.
"""

from __future__ import annotations

import math
import os

import matplotlib
import numpy as np
import xarray as xr

from .. import theory
from .base import new_figure, write_figures


def _switched(ds: xr.Dataset) -> bool:
    t_switch = ds.attrs.get("t_switch", math.nan)
    return "t_offset" in ds and np.isfinite(t_switch) and bool(np.any(ds.t_offset.values > 0))


def panels(ds: xr.Dataset, title: str, ylabel: str, draw, yscale: str = "log"):
    """A figure of `draw(ax, ds_part, t)` over log t, plus t − t_switch after a clock switch."""
    parts = [(ds.isel(time=ds.time.values > 0), "time", "time t")]
    if _switched(ds):
        after = ds.isel(time=(ds.t_offset.values > 0) & (ds.t_local.values > 0))
        parts.append((after, "t_local", f"t − t_switch  (t_switch = {ds.attrs['t_switch']:.3g})"))
    fig, axes = new_figure(len(parts))
    for ax, (part, clock, xlabel) in zip(axes, parts):
        draw(ax, part, part[clock].values)
        ax.set(xscale="log", yscale=yscale, xlabel=xlabel)
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title)
    return fig


def _hline(ax, value, label, style="--", color="k"):
    if value is not None and np.isfinite(value):
        ax.axhline(value, ls=style, color=color, lw=1, label=label)


def risk(ds: xr.Dataset):
    """Excess risk R − R_min over time."""

    def draw(ax, part, t):
        ax.plot(t, part.excess_risk, label="R − R_min")

    return panels(ds, "Excess risk", "R(W(t)) − R_min", draw)


def sharpness(ds: xr.Dataset):
    """Sharpness S(W(t)) beside the bracket of the flattest minimizer's S_min (theory.md §2):
    S_lower ≤ S_min ≤ S_balanced ≤ S_upper (bounds on S_min, not on S(W(t)))."""
    b = theory.bounds_from_dataset(ds)

    def draw(ax, part, t):
        ax.plot(t, part.sharpness, label="S(W(t))")
        _hline(ax, b.get("S_lower"), "S_lower = 2cLa ≤ S_min", "--", "C3")
        _hline(ax, b.get("S_balanced"), "S_balanced ≥ S_min", "-.", "C2")
        _hline(ax, b.get("S_upper"), "S_upper ≥ S_min", ":", "C3")

    return panels(ds, "Sharpness (top Hessian eigenvalue)", "S(W(t))", draw)


def pl(ds: xr.Dataset):
    """PL ratio ‖∇R‖²/(R − R_min) with its pointwise lower bound 4λ‖pᵀW_L⋯W_2‖²."""

    def draw(ax, part, t):
        ax.plot(t, part.pl_ratio, label="PL ratio")
        if "pl_lower_bound" in part:
            ax.plot(t, part.pl_lower_bound, "--", color="C3", label="4λ‖pᵀW_L⋯W_2‖² (lower bound)")

    return panels(ds, "Polyak–Łojasiewicz ratio", "‖∇R‖² / (R − R_min)", draw)


def _per_index(name: str, ylabel: str, title: str, yscale: str = "linear", transform=lambda v: v):
    """A figure with one line per layer (or interface) of `transform(observable name)`."""

    def make(ds: xr.Dataset):
        dim = ds[name].dims[1]
        cmap = matplotlib.colormaps["viridis"].resampled(max(ds.sizes[dim], 2))

        def draw(ax, part, t):
            for i, k in enumerate(part[dim].values):
                label = f"{dim} {k}" if part.sizes[dim] <= 10 else None
                ax.plot(t, transform(part[name].sel({dim: k})), color=cmap(i), lw=1, label=label)

        return panels(ds, title, ylabel, draw, yscale)

    make.__doc__ = f"{title}: one line per {name} index."
    return make


singular_values = _per_index("singular_values", "σ_k (top singular value)", "Top singular value of each layer")
alignment = _per_index(
    "alignment", "1 − ⟨v_{k+1}, u_k⟩²", "Misalignment of consecutive layers", "log", lambda v: 1 - v
)
rank_one_gap = _per_index("rank_one_gap", "‖W_k‖_F² − ‖W_k‖_2²", "Distance to rank one", "log")


def conservation(ds: xr.Dataset):
    """Drift of the conserved quantities W_{k+1}ᵀW_{k+1} − W_kW_kᵀ (zero along exact GF)."""

    def draw(ax, part, t):
        ax.plot(t, part.balance_drift.max("interface"))

    return panels(ds, "Conserved quantities", "max_k ‖D_k(t) − D_k(0)‖_F", draw)


FIGURES = {
    "risk": (risk, "excess_risk"),
    "sharpness": (sharpness, "sharpness"),
    "pl_ratio": (pl, "pl_ratio"),
    "singular_values": (singular_values, "singular_values"),
    "alignment": (alignment, "alignment"),
    "rank_one_gap": (rank_one_gap, "rank_one_gap"),
    "conservation": (conservation, "balance_drift"),
}
"""File stem → (figure function, the observable it needs)."""


def save_figures(ds: xr.Dataset, folder: str | os.PathLike) -> list[str]:
    """Write `folder/NAME.png` for each figure whose observable is in `ds`."""
    recorded = {
        name: make(ds)
        for name, (make, needs) in FIGURES.items()
        if needs in ds and not (ds[needs].ndim > 1 and ds[needs].shape[1] == 0)
    }
    return write_figures(recorded, folder)
