"""The theorems of theory.md as closed forms, and a run held against them.

- `closed_forms`: the bounds of §2–§5 from a problem and a network;
- `tolerances`: the numerical slack each check allows, and how it is derived;
- `curvature`: the Hessian at one network, and its split 2JᵀΣ̂J + B;
- `verdict`: [`Check`][], one statement held against one trajectory, and `judge`;
- `context`: [`RunContext`][], what every check of a GF trajectory needs, computed once;
- `flow_checks`, `small_scale_checks`, `residual_checks`, `curvature_checks`,
  `descent_checks`: the checks;
- `report`: tables, Markdown and JSON reports.

Margins are the room left before a check fails, in the units of the quantity, the
numerical tolerance included: negative exactly when a statement is violated.
"""

from __future__ import annotations

import xarray as xr

from ..problem import Problem
from .closed_forms import (
    assumption_a2,
    balanced_minimizer,
    balanced_sharpness,
    bounds,
    bounds_from_attrs,
    bounds_from_dataset,
    corollary_bounds,
    corollary_scale,
    critical_step_size,
    epsilon,
    initial_constants,
    norm_sharpness_bound,
    partial_product_bounds,
    partial_product_extremes,
    residual_scale,
    residual_theta,
    sharpness_constant,
    slides_norm_sharpness_bound,
    smallness,
)
from .context import RunContext
from .curvature import Curvature, final_curvature, sharpness
from .descent_checks import check_descent
from .flow_checks import check_flow
from .report import exit_code, format_table, read_report, to_markdown, write_report
from .tolerances import SAFETY, local_error_bound
from .verdict import VERDICTS, Check


def check(trajectory: xr.Dataset, problem: Problem | None = None) -> list[Check]:
    """Hold a trajectory against every statement of theory.md that applies to it.

    **Arguments:**

    - `trajectory`: an `xarray.Dataset` from `gflow.solve` (method "gradient_flow") or
      from gradient descent (method "gradient_descent").
    - `problem`: the data, when at hand; checks that need Σ̂ or y (the final sharpness
      recomputed densely from the stored weights, (A2) without a recorded risk) use it,
      others read the problem's constants from `attrs`.

    **Returns:** a list of [`Check`][], in a stable order.
    """
    if trajectory.attrs.get("method") == "gradient_descent":
        return check_descent(trajectory, problem)
    return check_flow(RunContext.from_dataset(trajectory, problem))


__all__ = [
    "SAFETY",
    "VERDICTS",
    "Check",
    "Curvature",
    "RunContext",
    "assumption_a2",
    "balanced_minimizer",
    "balanced_sharpness",
    "bounds",
    "bounds_from_attrs",
    "bounds_from_dataset",
    "check",
    "corollary_bounds",
    "corollary_scale",
    "critical_step_size",
    "epsilon",
    "exit_code",
    "final_curvature",
    "format_table",
    "initial_constants",
    "local_error_bound",
    "norm_sharpness_bound",
    "partial_product_bounds",
    "partial_product_extremes",
    "read_report",
    "residual_scale",
    "residual_theta",
    "sharpness",
    "sharpness_constant",
    "slides_norm_sharpness_bound",
    "smallness",
    "to_markdown",
    "write_report",
]
