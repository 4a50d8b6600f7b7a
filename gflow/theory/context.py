"""What every check of one gradient-flow trajectory needs, computed once."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import xarray as xr

from ..models import DeepLinear
from ..observables import balance
from ..problem import Problem, is_full_rank
from ..solver import ENERGY, STEPS
from ..trajectory import model_from
from . import closed_forms, tolerances
from .closed_forms import layer_arrays, trainable_arrays
from .curvature import Curvature, final_curvature


@dataclasses.dataclass(frozen=True, eq=False)
class RunContext:
    """One GF trajectory with the quantities its checks share.

    Build it with [`RunContext.from_dataset`][]; the Hessian at the final point (dense at
    paper size) is computed on first use and kept.

    **Fields:**

    - `ds`, `problem`: the trajectory and the data (None: constants from `attrs` only).
    - `initial`, `final`: the stored networks W(0) and W_final.
    - `depth`, `p_norm`: L and ‖p‖.
    - `is_linear`, `activation`: whether the network computes a linear map (the statements of
      §2–§5 are about those), and its activation ("linear", "gelu", "gelu_exact").
    - `bounds`: [`bounds_from_dataset`][]: S_lower, S_balanced, S_upper, … of this run.
    - `times`, `t_end`: save times and the final time (`attrs["t_final"]`, else the last save).
    - `status`, `converged`: the solver's status, and whether it is "converged".
    - `full_rank`: whether Σ̂ has full rank ([`gflow.problem.is_full_rank`][]).
    - `has_steps`: whether `attrs` hold rtol, atol and a step count (else no solver tolerance).
    - `N`: accepted steps; `steps`: accepted steps up to each save (None when not recorded).
    - `delta`, `delta_energy`: local error bounds of one step on W and on E (0 without
      `has_steps`); the state (W, E) has P + 1 components.
    - `n_params`, `entry_max`, `weight_max`: P, the largest |entry| and the largest ‖W_k‖_F
      over both end points (and the recorded `weight_norms`).
    - `grad_max`, `sharp_max`: the largest recorded ‖∇R‖ (None when `grad_norm_sq` is not
      recorded) and sharpness (0 when not recorded): scales of the budgets.
    """

    ds: xr.Dataset
    problem: Problem | None
    initial: DeepLinear
    final: DeepLinear
    depth: int
    p_norm: float
    is_linear: bool
    activation: str
    bounds: dict[str, float]
    times: np.ndarray
    t_end: float
    status: str
    converged: bool
    full_rank: bool
    has_steps: bool
    N: int
    steps: np.ndarray | None
    delta: float
    delta_energy: float
    n_params: int
    entry_max: float
    weight_max: float
    grad_max: float | None
    sharp_max: float

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, problem: Problem | None = None) -> RunContext:
        """Read the networks, constants and solver settings of a GF trajectory `ds`."""
        attrs = ds.attrs
        initial, final = model_from(ds, "initial"), model_from(ds, "final")
        times = ds.time.values
        n_params = sum(int(np.size(w)) for w in trainable_arrays(initial))
        entry_max = max(_entry_max(initial), _entry_max(final))
        weight_max = max(_weight_max(initial), _weight_max(final))
        if "weight_norms" in ds:
            weight_max = max(weight_max, float(np.nanmax(ds.weight_norms.values)))
        has_steps = "flow_rtol" in attrs and "flow_atol" in attrs and (
            "num_accepted_steps" in attrs or "num_steps" in attrs
        )
        energy_max = float(np.nanmax(np.abs(ds[ENERGY].values))) if ENERGY in ds else 0.0
        n_state = n_params + 1
        status = str(attrs.get("status", "unknown"))
        return cls(
            ds=ds,
            problem=problem,
            initial=initial,
            final=final,
            depth=initial.depth,
            p_norm=float(np.linalg.norm(np.asarray(initial.p))),
            is_linear=initial.is_linear,
            activation=initial.activation,
            bounds=closed_forms.bounds_from_dataset(ds),
            times=times,
            t_end=float(attrs.get("t_final", times[-1])),
            status=status,
            converged=status == "converged",
            full_rank=is_full_rank(attrs["lam"], attrs["Lam"]),
            has_steps=has_steps,
            N=tolerances.accepted_steps(attrs) if has_steps else 0,
            steps=ds[STEPS].values if STEPS in ds else None,
            delta=tolerances.local_error_bound(attrs, n_state, entry_max) if has_steps else 0.0,
            delta_energy=tolerances.local_error_bound(attrs, n_state, energy_max) if has_steps else 0.0,
            n_params=n_params,
            entry_max=entry_max,
            weight_max=weight_max,
            grad_max=None if "grad_norm_sq" not in ds else _recorded_max(ds, "grad_norm_sq", math.sqrt),
            sharp_max=_recorded_max(ds, "sharpness"),
        )

    @property
    def attrs(self) -> dict:
        return self.ds.attrs

    def linear_only(self, why: str) -> str:
        """The note of a statement about linear networks held against a network with an
        activation: what the network has, and `why` the statement does not concern it."""
        return f"the network has {self.activation} activations: {why}"

    @property
    def interval_steps(self) -> np.ndarray:
        """Steps that can have moved the state within each save interval."""
        return tolerances.steps_per_interval(self.steps, self.N, self.times.size)

    @property
    def steps_to_save(self) -> np.ndarray:
        """Steps that can have moved the state from t = 0 to each save."""
        return tolerances.steps_up_to(self.steps, self.N, self.times.size)

    @property
    def interface_widths(self) -> np.ndarray:
        """d_1, …, d_{L−1}: the size of D_k at each interface."""
        return np.asarray(self.initial.widths[1:-1])

    @functools.cached_property
    def curvature(self) -> Curvature | None:
        """∇²R at the final weights ([`final_curvature`][]); None without the Problem."""
        return None if self.problem is None else final_curvature(self.final, self.problem)

    @property
    def final_sharpness(self) -> tuple[float | None, str]:
        """(S(W_final), how it was obtained), or (None, "") when neither the Problem nor a
        recorded `sharpness` is at hand."""
        if self.curvature is not None:
            how = "dense Hessian" if self.curvature.dense else "Lanczos"
            return self.curvature.sharpness, f"recomputed from the stored final weights ({how})"
        if "sharpness" in self.ds:
            return float(self.ds.sharpness.values[-1]), "recorded at the last save (Lanczos; a lower estimate)"
        return None, ""

    @functools.cached_property
    def final_svd(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(U, σ, Vᵀ) of each layer of W_final (numpy, full SVD)."""
        return [np.linalg.svd(w) for w in layer_arrays(self.final)]

    @property
    def final_drift(self) -> np.ndarray:
        """‖D_k(W_final) − D_k(W(0))‖_F at each interface, from the stored layers in numpy:
        microseconds, where the observable run eagerly traced ~0.15 s of small programs."""
        W, W0 = layer_arrays(self.final), layer_arrays(self.initial)
        return np.array([np.linalg.norm(balance(W[k], W[k + 1]) - balance(W0[k], W0[k + 1]))
                         for k in range(len(W) - 1)])

    @functools.cached_property
    def epsilon(self) -> float:
        """ε of the initialization (theory.md §4)."""
        return closed_forms.epsilon(self.initial)


def _recorded_max(ds: xr.Dataset, name: str, transform=float) -> float:
    if name not in ds or not np.isfinite(ds[name].values).any():
        return 0.0
    return transform(float(np.nanmax(ds[name].values)))


def _entry_max(model: DeepLinear) -> float:
    return max(float(np.max(np.abs(w))) for w in trainable_arrays(model))


def _weight_max(model: DeepLinear) -> float:
    return max(float(np.linalg.norm(w)) for w in layer_arrays(model))
