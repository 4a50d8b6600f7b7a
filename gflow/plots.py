"""Figures of a gradient-flow trajectory, each observable next to its theoretical line.

Every function takes a trajectory Dataset and returns a matplotlib Figure; time is on a
log axis (plateaus span decades), so the point t = 0 is left out. [`save_figures`][]
writes the ones whose observables were recorded.
"""

from __future__ import annotations

import os

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .trajectory import atomic_path


def new_figure(ncols: int = 1, width: float = 5.5, height: float = 4.0):
    """A Figure with `ncols` axes, made without pyplot: no global state, any backend."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _positive_time(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(time=ds.time.values > 0)


def _axes(title: str, ylabel: str, ncols: int = 1):
    fig, axes = new_figure(ncols)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("time t")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title)
    return fig, axes


def _hline(ax, value, label, style="--", color="k"):
    if value is not None and np.isfinite(value):
        ax.axhline(value, ls=style, color=color, lw=1, label=label)


def risk(ds: xr.Dataset):
    """Risk and excess risk R − R_min over time."""
    ds = _positive_time(ds)
    fig, (ax1, ax2) = _axes("Risk", "R(W(t))", ncols=2)
    ax1.plot(ds.time, ds.risk, label="R")
    _hline(ax1, ds.attrs["R_min"], "R_min")
    ax2.plot(ds.time, ds.excess_risk, color="C1", label="R − R_min")
    ax2.set_yscale("log")
    ax2.set_ylabel("R − R_min")
    for ax in (ax1, ax2):
        ax.legend()
    return fig


def sharpness(ds: xr.Dataset):
    """Sharpness S(W(t)) with S_lower ≤ S_min ≤ S_upper (theory.md §2)."""
    from . import theory

    b = theory.bounds_from_attrs(ds.attrs)
    ds = _positive_time(ds)
    fig, (ax,) = _axes("Sharpness (top Hessian eigenvalue)", "S(W(t))")
    ax.plot(ds.time, ds.sharpness, label="S(W(t))")
    _hline(ax, b.get("S_lower"), "S_lower = 2cLa", "--", "C3")
    _hline(ax, b.get("S_upper"), "S_upper", ":", "C3")
    ax.set_yscale("log")
    ax.legend()
    return fig


def pl(ds: xr.Dataset):
    """PL ratio ‖∇R‖²/(R − R_min) with its pointwise lower bound 4λ‖pᵀW_L⋯W_2‖²."""
    ds = _positive_time(ds)
    fig, (ax,) = _axes("Polyak–Łojasiewicz ratio", "‖∇R‖² / (R − R_min)")
    ax.plot(ds.time, ds.pl_ratio, label="PL ratio")
    if "pl_lower_bound" in ds:
        ax.plot(ds.time, ds.pl_lower_bound, "--", color="C3", label="4λ‖pᵀW_L⋯W_2‖² (lower bound)")
    ax.set_yscale("log")
    ax.legend()
    return fig


def layers(ds: xr.Dataset):
    """Top singular value of each layer, and the alignment ⟨v_{k+1}, u_k⟩² of each interface."""
    ds = _positive_time(ds)
    panels = [n for n in ("singular_values", "alignment") if n in ds]
    fig, axes = _axes("Layers", "", ncols=len(panels))
    for ax, name in zip(axes, panels):
        dim = ds[name].dims[1]
        cmap = matplotlib.colormaps["viridis"].resampled(max(ds.sizes[dim], 2))
        for i, k in enumerate(ds[dim].values):
            ax.plot(ds.time, ds[name].sel({dim: k}), color=cmap(i), lw=1, label=f"{dim} {k}")
        ax.set_ylabel({"singular_values": "σ_k (top singular value)", "alignment": "⟨v_{k+1}, u_k⟩²"}[name])
        if ds.sizes[dim] <= 10:
            ax.legend(fontsize="small")
    return fig


def conservation(ds: xr.Dataset):
    """Drift of the conserved quantities W_{k+1}ᵀW_{k+1} − W_kW_kᵀ (zero along exact GF)."""
    ds = _positive_time(ds)
    fig, (ax,) = _axes("Conserved quantities", "max_k ‖D_k(t) − D_k(0)‖_F")
    ax.plot(ds.time, ds.balance_drift.max("interface"))
    ax.set_yscale("log")
    return fig


FIGURES = {
    "risk": (risk, ("risk", "excess_risk")),
    "sharpness": (sharpness, ("sharpness",)),
    "pl_ratio": (pl, ("pl_ratio",)),
    "layers": (layers, ("singular_values",)),
    "alignment": (layers, ("alignment",)),
    "conservation": (conservation, ("balance_drift",)),
}


def save_figures(ds: xr.Dataset, folder: str | os.PathLike) -> list[str]:
    """Write figures/NAME.png for each figure whose observables are in `ds`."""
    os.makedirs(folder, exist_ok=True)
    written, done = [], set()
    for name, (make, needs) in FIGURES.items():
        if make in done or not all(n in ds for n in needs):
            continue
        if name == "alignment" and "singular_values" in ds:
            continue  # the layers figure already shows it
        if name == "conservation" and ds.sizes.get("interface", 0) == 0:
            continue
        done.add(make)
        fig = make(ds)
        path = os.path.join(os.fspath(folder), f"{name}.png")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        written.append(path)
    return written
