"""The figures of a sweep, drawn from its combined Dataset: sharpness, distance to π* and
divergence against the initialization scale and against the step size (the paper's
figures, with the gradient-flow point and the seed-to-seed spread), the evolution along
GD, and the generalization gap.

A sweep of networks with an activation (GELU, theory.md §8) has no π* to be near and no
known R_min: its figures show the final risk in place of the distance, draw 2La and 8LΛ
as reference lines only, and keep every run that finished without diverging (as the
authors plot "after training"), where a linear sweep keeps the converged runs."""

from __future__ import annotations

import itertools
import json
import os
import warnings
from collections.abc import Sequence

import matplotlib
import numpy as np
import xarray as xr

from .. import plots

_INIT_KEYS = ("model.init.scale", "model.init.s")
FINITE_STEP_FLOWS = (("central", "x"), ("modified", "+"))
"""The flows a sweep may put beside GD at each η (`[descent] central`, `modified`), and their markers."""

def _quartiles(v: np.ndarray):
    """Median and quartiles over the last axis, ignoring NaN (all-NaN → NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q = np.nanpercentile(v, [25, 50, 75], axis=-1)
    return q[1], q[0], q[2]


def _band(ax, x, values, color, label, marker="o", ls="-"):
    """Median line with the interquartile band of `values` (x, seeds)."""
    med, lo, hi = _quartiles(np.asarray(values, np.float64))
    ok = np.isfinite(med)
    if not ok.any():
        return
    ax.plot(np.asarray(x)[ok], med[ok], marker=marker, ms=4, color=color, label=label, ls=ls)
    ax.fill_between(np.asarray(x)[ok], lo[ok], hi[ok], color=color, alpha=0.2, lw=0)


def _color(i: int) -> str:
    """Colors of the step sizes, leaving red and green to the reference lines."""
    return f"C{[0, 1, 4, 5, 6, 7, 8, 9][i % 8]}"


def _one_axes():
    fig, (ax,) = plots.new_figure(width=6.5, height=4.5)
    return fig, ax


def _facets(ds: xr.Dataset, dims: Sequence[str], limit: int = 12):
    """(file suffix, label, sub-Dataset) for each combination of `dims` (at most `limit`)."""
    combos = list(itertools.product(*(range(ds.sizes[d]) for d in dims)))[:limit]
    for combo in combos:
        sel = dict(zip(dims, combo))
        suffix = "".join(f"_{d}-{ds[d].values[i]}" for d, i in sel.items())
        label = ", ".join(f"{d} = {ds[d].values[i]}" for d, i in sel.items())
        yield suffix, label, ds.isel(sel)


def _nonlinear(ds: xr.Dataset) -> bool:
    """Whether the sweep's network has an activation (its GD runs end on ‖∇R‖²)."""
    return "final_grad_norm_sq" in ds


def _where(ds, var, status_var="status"):
    """`var` where a run counts: converged; for a network with an activation, finished
    without diverging (GD: converged, stalled or not converged; GF: converged or at t_max)."""
    ok = ("converged",) if not _nonlinear(ds) else (
        ("converged", "stalled", "not_converged") if status_var == "status" else ("converged", "reached_t_max"))
    return np.where(np.isin(ds[status_var].values, ok), ds[var].values, np.nan)


def _end_point(ds: xr.Dataset) -> tuple[str, str, str]:
    """(GD variable, GF variable, label) of what the end of a run is compared by: ‖w − π*‖²,
    or the risk for a network with an activation."""
    if _nonlinear(ds):
        return "final_risk", "gf_final_risk", "final risk R"
    return "final_distance_to_pi_star", "gf_final_distance_to_pi_star", "final ‖w − π*‖²"


def _end_values(ds: xr.Dataset, var: str) -> np.ndarray:
    """The values of `var` as plotted on a log axis: ‖w − π*‖² (or R), floored at 1e-32."""
    v = ds[var].values
    return np.maximum(v if _nonlinear(ds) else v**2, 1e-32)


def _reference_labels(ds: xr.Dataset) -> tuple[str, str]:
    """Labels of the S_lower and 8LΛ lines (reference lines only with an activation)."""
    if _nonlinear(ds):
        return "2La (reference)", "8LΛ (reference)"
    return "S_lower = 2La", "8LΛ"


def sharpness_vs_init(ds: xr.Dataset, x: str):
    """Sharpness at initialization and after training against the init scale (the paper's
    figure), with 2/η per step size, S_lower = 2La, 8LΛ, and the GF point (η → 0)."""
    fig, (ax,) = plots.new_figure(width=6.5, height=4.5)
    xv = ds[x].values
    sub = ds.transpose(x, "step_size", "seed", ...)
    for i, eta in enumerate(ds.step_size.values):
        s = sub.isel(step_size=i)
        _band(ax, xv, _where(s, "final_sharpness"), _color(i), f"after GD, η = {eta:g}")
        for flow_name, marker in FINITE_STEP_FLOWS:  # GD's final sharpness predicted by a flow (theory.md §8)
            if f"{flow_name}_final_sharpness" in ds:
                _band(ax, xv, _where(s, f"{flow_name}_final_sharpness", f"{flow_name}_status"), _color(i),
                      f"{flow_name} flow, η = {eta:g}", marker=marker, ls=":")
        ax.axhline(2 / eta, color=_color(i), ls="--", lw=0.8)
    _band(ax, xv, sub.initial_sharpness.values, "0.5", "at initialization", marker="s")
    if "gf_final_sharpness" in ds:
        _band(ax, xv, _where(sub, "gf_final_sharpness", "gf_status"), "k", "GF (η → 0)", marker="^")
    lower, upper = _reference_labels(ds)
    ax.plot(xv, sub.S_lower.values, color="C3", lw=2, ls=":", label=lower)
    ax.plot(xv, sub.S_reference_8LLam.values, color="C2", lw=1.5, ls="-.", label=upper)
    ax.set(yscale="log", xlabel=x, ylabel="sharpness S",
           title="Sharpness vs initialization (dashed: 2/η; median, quartile band)")
    ax.legend(fontsize=7)
    return fig


def distance_vs_init(ds: xr.Dataset, x: str):
    """Final ‖w − π*‖² (the final risk with an activation) of the runs that did not
    diverge against the init scale, per η and GF."""
    fig, (ax,) = plots.new_figure(width=6.5, height=4.5)
    xv = ds[x].values
    sub = ds.transpose(x, "step_size", "seed", ...)
    gd_var, gf_var, label = _end_point(ds)
    for i, eta in enumerate(ds.step_size.values):
        _band(ax, xv, _end_values(sub, gd_var)[:, i], _color(i), f"η = {eta:g}")
    if gf_var in ds:
        _band(ax, xv, _end_values(sub, gf_var), "k", "GF (η → 0)", "^")
    ax.set(yscale="log", xlabel=x, ylabel=label, title=f"{label} (diverged runs left out)")
    ax.legend(fontsize=7)
    return fig


def divergence_vs_init(ds: xr.Dataset, x: str):
    """Probability that GD diverges (solid) or fails in any way (dashed) against the scale."""
    fig, (ax,) = plots.new_figure(width=6.5, height=4.5)
    xv = ds[x].values
    st = ds.status.transpose(x, "step_size", "seed", ...).values
    ran = st != ""
    for i, eta in enumerate(ds.step_size.values):
        n = ran[:, i].sum(axis=-1)
        ax.plot(xv, (st[:, i] == "diverged").sum(-1) / n, "o-", color=_color(i), label=f"η = {eta:g}")
        ax.plot(xv, (ran[:, i] & (st[:, i] != "converged")).sum(-1) / n, ":", color=_color(i))
    ax.set(ylim=(-0.05, 1.05), xlabel=x, ylabel="fraction of runs",
           title="GD divergence (solid) and any failure (dotted)")
    ax.legend(fontsize=7)
    return fig


def _lines(ds: xr.Dataset, grid: Sequence[str]):
    """(label, sub-Dataset on step_size × seed) for every grid point (at most 12)."""
    for _, label, sub in _facets(ds, grid):
        yield label or "all", sub.transpose("step_size", "seed", ...)


def _gf_marker(ax, x0, values, color):
    med, lo, hi = _quartiles(np.asarray(values, np.float64)[None, :])
    if np.isfinite(med[0]):
        ax.errorbar([x0], med, yerr=[[med[0] - lo[0]], [hi[0] - med[0]]], fmt="^", color=color, ms=6, capsize=3)


def step_size_figures(ds: xr.Dataset, grid: Sequence[str]) -> dict:
    """Final sharpness, squared distance to π* and failure rate against η, one line per
    grid point; the GF point (η → 0) drawn left of the axis's smallest η; vertical lines
    at η_crit = 2/S_lower = 1/(aL) (‖π*‖ = ‖p‖ = 1)."""
    etas = ds.step_size.values
    x0 = etas.min() / 3
    out = {}
    gd_var, gf_var, end_label = _end_point(ds)
    specs = [("sharpness_vs_step_size", "final sharpness S"),
             ("distance_vs_step_size", end_label),
             ("divergence_vs_step_size", "fraction of runs that fail")]
    figs = {name: _one_axes() for name, _ in specs}
    lines = list(_lines(ds, grid))
    cmap = matplotlib.colormaps["viridis"]
    for k, (label, sub) in enumerate(lines):
        color = cmap(k / max(1, len(lines) - 1)) if len(lines) > 1 else "C0"
        ax = figs["sharpness_vs_step_size"][1]
        _band(ax, etas, _where(sub, "final_sharpness"), color, label)
        if "gf_final_sharpness" in sub:
            _gf_marker(ax, x0, _where(sub, "gf_final_sharpness", "gf_status"), color)
        for flow_name, marker in FINITE_STEP_FLOWS:  # predicted by a flow (theory.md §8)
            if f"{flow_name}_final_sharpness" in sub:
                _band(ax, etas, _where(sub, f"{flow_name}_final_sharpness", f"{flow_name}_status"), color,
                      f"{label}: {flow_name} flow", marker=marker, ls=":")
        ax.axhline(float(sub.S_lower), color=color, ls=":", lw=1)
        ax = figs["distance_vs_step_size"][1]
        _band(ax, etas, _end_values(sub, gd_var), color, label)
        if gf_var in sub:
            _gf_marker(ax, x0, _end_values(sub, gf_var), color)
        st = sub.status.values
        ran = st != ""
        fail = (ran & (st != "converged")).sum(-1) / np.maximum(ran.sum(-1), 1)
        figs["divergence_vs_step_size"][1].plot(etas, fail, "o-", color=color, label=label)
        for name in ("distance_vs_step_size", "divergence_vs_step_size"):
            figs[name][1].axvline(float(sub.eta_crit), color=color, ls=":", lw=1)
    grid_eta = np.geomspace(x0 * 1.7, etas.max() * 1.3, 100)
    figs["sharpness_vs_step_size"][1].plot(grid_eta, 2 / grid_eta, "k--", lw=1, label="2/η")
    for name, ylabel in specs:
        fig, ax = figs[name]
        ax.axvline(x0 * 1.7, color="0.7", lw=0.5)
        ax.annotate("GF", (x0, 0.02), xycoords=("data", "axes fraction"), ha="center", fontsize=8)
        ax.set(xscale="log", xlabel="step size η  (GF: η → 0, left of the grey line)", ylabel=ylabel)
        if name != "divergence_vs_step_size":
            ax.set_yscale("log")
        else:
            ax.set_ylim(-0.05, 1.05)
        ax.set_title({"sharpness_vs_step_size": f"Final sharpness (dotted: {_reference_labels(ds)[0]}; dashed: 2/η)",
                      "distance_vs_step_size": f"{end_label} (dotted: 1/(aL))",
                      "divergence_vs_step_size": "GD failures (dotted: 1/(aL))"}[name])
        ax.legend(fontsize=7)
        out[name] = fig
    return out


def evolution(ds: xr.Dataset):
    """Distance to π* and sharpness (those recorded) against GD steps, per η: median
    and quartile band over seeds, with 2/η and S_lower."""
    names = [n for n in ("distance_to_pi_star", "sharpness", "excess_risk", "risk") if n in ds and "record" in ds[n].dims]
    fig, axes = plots.new_figure(len(names), width=5, height=4)
    for ax, name in zip(axes, names):
        for i, eta in enumerate(ds.step_size.values):
            v = ds[name].isel(step_size=i).transpose("record", "seed").values
            _band(ax, ds.step.values[i], v, _color(i), f"η = {eta:g}", marker="")
            if name == "sharpness":
                ax.axhline(2 / eta, color=_color(i), ls="--", lw=0.8)
        if name == "sharpness":
            ax.axhline(float(ds.S_lower), color="C3", ls=":", lw=1.5, label=_reference_labels(ds)[0])
            if "gf_final_sharpness" in ds:
                ax.axhline(float(np.nanmedian(ds.gf_final_sharpness.values)), color="k", ls="-.",
                           lw=1, label="GF, final")
        else:
            ax.set_yscale("log")
        ax.set(xlabel="GD step", ylabel=name.replace("_", " "))
        ax.legend(fontsize=7)
    fig.suptitle("Evolution along GD (median, quartile band; dashed: 2/η)")
    return fig


def generalization(ds: xr.Dataset):
    """Generalization gap (test risk − train risk) against final sharpness, converged runs."""
    fig, (ax,) = plots.new_figure(width=6, height=4.5)
    for i, eta in enumerate(ds.step_size.values):
        s = ds.isel(step_size=i)
        ok = (s.status.values == "converged").ravel()
        gap = (s.final_test_risk.values - s.final_risk.values).ravel()
        ax.scatter(s.final_sharpness.values.ravel()[ok], gap[ok], s=10, color=_color(i), alpha=0.6,
                   label=f"η = {eta:g}")
    if "gf_final_test_risk" in ds and "gf_final_risk" in ds:
        ok = (ds.gf_status.values == "converged").ravel()
        gap = (ds.gf_final_test_risk.values - ds.gf_final_risk.values).ravel()
        ax.scatter(ds.gf_final_sharpness.values.ravel()[ok], gap[ok], s=14, color="k", marker="^", label="GF")
    ax.set(xscale="log", xlabel="final sharpness S", ylabel="test risk − train risk",
           title="Generalization gap vs sharpness")
    ax.legend(fontsize=7)
    return fig


def figures(ds: xr.Dataset) -> dict:
    """Every figure that the sweep's dims and variables allow, by file stem."""
    dims = json.loads(ds.attrs["sweep_dims"])
    keys = dict(zip(dims, json.loads(ds.attrs["sweep_keys"])))
    init = [d for d in dims if keys[d] in _INIT_KEYS]
    others = [d for d in dims if d not in init]
    out = {}
    for x in init:
        rest = [d for d in dims if d != x]
        for suffix, _, sub in _facets(ds, rest):
            out[f"sharpness_vs_{x}{suffix}"] = sharpness_vs_init(sub, x)
            out[f"distance_vs_{x}{suffix}"] = distance_vs_init(sub, x)
            out[f"divergence_vs_{x}{suffix}"] = divergence_vs_init(sub, x)
    out.update(step_size_figures(ds, dims))
    evolving = [n for n in ("distance_to_pi_star", "sharpness", "excess_risk", "risk") if n in ds and "record" in ds[n].dims]
    if evolving and ds.sizes["record"] > 2:
        for suffix, _, sub in _facets(ds, init + others, limit=4):
            out[f"evolution{suffix}"] = evolution(sub)
    if "final_test_risk" in ds and "final_risk" in ds:
        out["generalization_vs_sharpness"] = generalization(ds)
    return out


def save_figures(ds: xr.Dataset, folder: str | os.PathLike) -> list[str]:
    """Write [`figures`][] as PNG files in `folder` (atomically); returns their paths."""
    return plots.write_figures(figures(ds), folder)
