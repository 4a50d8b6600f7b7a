"""Markdown tables of a run's results (for `summary.md` and notebooks)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .descent import STATUSES

_FLOW_COLUMNS = (("distance_to_flow", "max ‖W_GD − W_GF‖"), ("distance_to_modified", "max ‖W_GD − W_modified‖"),
                 ("distance_to_central", "max ‖W_GD − W_central‖"))


def summary_table(gd: xr.Dataset, flows: dict | None = None) -> str:
    """One Markdown row per step size: outcomes, final sharpness against 2/η and S_lower;
    with finite-step flows (`gflow.compare.finite_step_flows`), the central flow's final
    sharpness (its prediction of GD's) and the largest distance of GD's first seed from
    each flow."""
    s_lower = float(gd.attrs["S_lower"])
    linear = "final_distance_to_pi_star" in gd  # a network with an activation has ‖∇R‖² in its place
    end, end_head = ("final_distance_to_pi_star", "‖w − π*‖") if linear else ("final_grad_norm_sq", "‖∇R‖²")
    extra = [(name, head) for name, head in _FLOW_COLUMNS if name in gd]
    central = {float(f.attrs["step_size"]): f for f in (flows or {}).values() if f.attrs["dynamics"] == "central"}
    heads = [head for _, head in extra] + (["central flow S_final"] if central else [])
    lines = [
        f"S_lower = {s_lower:.6g}, η_crit = 2/S_lower = {2 / s_lower:.6g}"
        + ("" if linear else " (2La: reference values only, the network has an activation)"),
        "",
        "| η | steps | converged | stalled | not converged | diverged | median S_final | 2/η | "
        f"median S_final/S_lower | median {end_head} |" + "".join(f" {h} |" for h in heads),
        "| --- " * (10 + len(heads)) + "|",
    ]
    for i, eta in enumerate(gd.step_size.values):
        st = gd.status.values[i]
        count = {k: int(np.sum(st == k)) for k in STATUSES}
        S = gd.final_sharpness.values[i]
        conv = st == "converged"
        med = float(np.median(S[conv])) if conv.any() and np.isfinite(S[conv]).any() else np.nan
        dist = gd[end].values[i]
        dmed = float(np.nanmedian(dist)) if np.isfinite(dist).any() else np.nan
        cells = [f"{_max(gd[name].values[i, 0]):.3e}" for name, _ in extra]
        if central:
            f = central.get(float(eta))
            cells.append(f"{float(f.edge_sharpness.values[-1]):.4g}" if f is not None else "—")
        lines.append(
            f"| {eta:.4g} | {int(gd.steps.values[i])} | {count['converged']} | {count['stalled']} | "
            f"{count['not_converged']} | {count['diverged']} | {med:.4g} | {2 / eta:.4g} | "
            f"{med / s_lower:.4g} | {dmed:.3e} |" + "".join(f" {c} |" for c in cells)
        )
    return "\n".join(lines)


def _max(values) -> float:
    return float(np.nanmax(values)) if np.isfinite(values).any() else np.nan
