"""Markdown tables of a run's results (for `summary.md` and notebooks)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .descent import STATUSES


def summary_table(gd: xr.Dataset) -> str:
    """One Markdown row per step size: outcomes, final sharpness against 2/η and S_lower."""
    s_lower = float(gd.attrs["S_lower"])
    lines = [
        f"S_lower = {s_lower:.6g}, η_crit = 2/S_lower = {2 / s_lower:.6g}",
        "",
        "| η | steps | converged | stalled | not converged | diverged | median S_final | 2/η | "
        "median S_final/S_lower | median ‖w − π*‖ |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, eta in enumerate(gd.step_size.values):
        st = gd.status.values[i]
        count = {k: int(np.sum(st == k)) for k in STATUSES}
        S = gd.final_sharpness.values[i]
        conv = st == "converged"
        med = float(np.median(S[conv])) if conv.any() and np.isfinite(S[conv]).any() else np.nan
        dist = gd.final_distance_to_pi_star.values[i]
        dmed = float(np.nanmedian(dist)) if np.isfinite(dist).any() else np.nan
        lines.append(
            f"| {eta:.4g} | {int(gd.steps.values[i])} | {count['converged']} | {count['stalled']} | "
            f"{count['not_converged']} | {count['diverged']} | {med:.4g} | {2 / eta:.4g} | "
            f"{med / s_lower:.4g} | {dmed:.3e} |"
        )
    return "\n".join(lines)
