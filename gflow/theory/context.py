"""What every check of one gradient-flow trajectory needs, computed once."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import xarray as xr

from ..models import DeepLinear
from ..problem import Problem, is_full_rank
from ..trajectory import model_from
from . import closed_forms, tolerances
from .closed_forms import layer_arrays, trainable_arrays
from .tolerances import SAFETY


@dataclasses.dataclass(frozen=True, eq=False)
class RunContext:
    """One GF trajectory with the quantities its checks share.

    Build it with [`RunContext.from_dataset`][]; the final sharpness (a dense Hessian when
    the Problem is given) is computed on first use and kept.

    **Fields:**

    - `ds`, `problem`: the trajectory and the data (None: constants from `attrs` only).
    - `initial`, `final`: the stored networks W(0) and W_final.
    - `depth`, `p_norm`: L and ‖p‖.
    - `bounds`: [`bounds`][] for this depth and ‖p‖.
    - `times`, `t_end`: save times and the final time (`attrs["t_final"]`, else the last save).
    - `status`, `converged`: the solver's status, and whether it is "converged".
    - `full_rank`: whether Σ̂ has full rank ([`gflow.problem.is_full_rank`][]).
    - `has_steps`: whether `attrs` hold rtol, atol and a step count (else no solver tolerance).
    - `N`, `delta`: accepted steps and the local error bound δ (0 and 0 without `has_steps`).
    - `n_params`, `entry_max`, `weight_max`: P, the largest |entry| and the largest ‖W_k‖_F
      over both end points (and the recorded `weight_norms`).
    - `conservation_tolerance`, `tolerance_note`: the allowed drift of D_k (inf without
      `has_steps`) and how it was derived.
    """

    ds: xr.Dataset
    problem: Problem | None
    initial: DeepLinear
    final: DeepLinear
    depth: int
    p_norm: float
    bounds: dict[str, float]
    times: np.ndarray
    t_end: float
    status: str
    converged: bool
    full_rank: bool
    has_steps: bool
    N: int
    delta: float
    n_params: int
    entry_max: float
    weight_max: float
    conservation_tolerance: float
    tolerance_note: str

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, problem: Problem | None = None) -> RunContext:
        """Read the networks, constants and solver settings of a GF trajectory `ds`."""
        attrs = ds.attrs
        initial, final = model_from(ds, "initial"), model_from(ds, "final")
        p_norm = float(np.linalg.norm(np.asarray(initial.p)))
        times = ds.time.values
        n_params = sum(int(np.size(w)) for w in trainable_arrays(initial))
        entry_max = max(_entry_max(initial), _entry_max(final))
        weight_max = max(_weight_max(initial), _weight_max(final))
        if "weight_norms" in ds:
            weight_max = max(weight_max, float(np.nanmax(ds.weight_norms.values)))
        has_steps = "flow_rtol" in attrs and "flow_atol" in attrs and (
            "num_accepted_steps" in attrs or "num_steps" in attrs
        )
        cons_tol = (
            tolerances.conservation_tolerance(attrs, n_params, entry_max, weight_max) if has_steps else math.inf
        )
        delta = tolerances.local_error_bound(attrs, n_params, entry_max) if has_steps else 0.0
        N = tolerances.accepted_steps(attrs) if has_steps else 0
        note = (
            f"tolerance {SAFETY:g}·N(2‖W‖δ+δ²) with N={N} accepted steps, δ=√P(atol+rtol·M)="
            f"{delta:.3g} (P={n_params}), ‖W‖≤{weight_max:.3g}"
        )
        status = str(attrs.get("status", "unknown"))
        return cls(
            ds=ds,
            problem=problem,
            initial=initial,
            final=final,
            depth=initial.depth,
            p_norm=p_norm,
            bounds=closed_forms.bounds(attrs, initial.depth, p_norm),
            times=times,
            t_end=float(attrs.get("t_final", times[-1])),
            status=status,
            converged=status == "converged",
            full_rank=is_full_rank(attrs["lam"], attrs["Lam"]),
            has_steps=has_steps,
            N=N,
            delta=delta,
            n_params=n_params,
            entry_max=entry_max,
            weight_max=weight_max,
            conservation_tolerance=cons_tol,
            tolerance_note=note,
        )

    @property
    def attrs(self) -> dict:
        return self.ds.attrs

    @functools.cached_property
    def final_sharpness(self) -> tuple[float | None, str]:
        """(S(W_final), how it was obtained), or (None, "") when neither the Problem nor a
        recorded `sharpness` is at hand. Recomputed from the weights when the Problem is
        given ([`sharpness`][]: a dense Hessian at paper size), once per trajectory."""
        if self.problem is not None:
            return closed_forms.sharpness(self.final, self.problem), "recomputed from the stored final weights"
        if "sharpness" in self.ds:
            return float(self.ds.sharpness.values[-1]), "recorded at the last save (Lanczos; a lower estimate)"
        return None, ""

    @functools.cached_property
    def epsilon(self) -> float:
        """ε of the initialization (theory.md §4)."""
        return closed_forms.epsilon(self.initial)


def _entry_max(model: DeepLinear) -> float:
    return max(float(np.max(np.abs(w))) for w in trainable_arrays(model))


def _weight_max(model: DeepLinear) -> float:
    return max(float(np.linalg.norm(w)) for w in layer_arrays(model))
