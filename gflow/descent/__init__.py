"""Gradient descent W ← W − η∇R beside gradient flow (theory.md §3).

A grid of runs (step sizes × initializations) is one `lax.scan` under `vmap` per distinct
step count; GD step k sits at GF time t = kη, and divergence is a recorded status.

- `scan`: the pure, jittable core ([`descend`][], the vmapped grid).
- `fused`: the default step kernel of a linear network: its gradient written out on the
  sufficient statistics (Σ̂, π*), runs vectorized with the run axis last.
- `run`: [`run`][]: validate, execute, assemble the Dataset; [`model_from`][] reads it back.
- `batching`: [`batch`][], [`unbatch`][], [`unbatch_first`][].
- `critical`: [`critical_step_size`][], the largest η from which GD converges.
"""

from .batching import batch, unbatch, unbatch_first
from .critical import CriticalStepSize, critical_step_size
from .run import DEFAULT_OBSERVABLES, STATUSES, model_from, run
from .scan import Descent, GridResult, GridSettings, descend, final_quantities

__all__ = [
    "DEFAULT_OBSERVABLES",
    "STATUSES",
    "CriticalStepSize",
    "Descent",
    "GridResult",
    "GridSettings",
    "batch",
    "critical_step_size",
    "descend",
    "final_quantities",
    "model_from",
    "run",
    "unbatch",
    "unbatch_first",
]
