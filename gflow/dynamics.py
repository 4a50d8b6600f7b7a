"""What a flow integrates: gradient flow, and the modified-equation flow, a continuous-time
model of GD at a finite step size η (theory.md §11). The central flow, the other one, is
in `gflow.central`.

Time is t = kη for every flow, as GD's step k sits in gflow. Each dynamics is a small
Equinox module with:

- `field(t, y, args)`: d(W, E)/dt on the state y = (W, E), `args = (static, problem,
  initial)`. E is the energy the flow dissipates, integrated with it, so that
  Φ(0) − Φ(t) = E(t) is checkable at every save for the function Φ the flow decreases
  (R for GF and the central flow, R̃ for the modified flow);
- `records(y, args)`: what it saves beside the observables, and `RECORDS`, their
  descriptions;
- `events()`: its terminating events besides convergence (condition functions);
- `dt0`: the first step (None: Diffrax picks it, at the cost of two more traces of
  the vector field).

The step size is a traced field: flows at several η share one compilation. The risk and
its derivatives come from `gflow.observables` and `gflow.linalg` only.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from . import observables as obs

DYNAMICS = ("gradient_flow", "modified", "central")
"""The flows `gflow.flow.FlowOptions.dynamics` chooses between."""

FINITE_STEP = DYNAMICS[1:]
"""The continuous-time models of GD at a finite step size that can stand beside it
(`[descent] modified`, `central`)."""

MODIFIED_RISK = "modified_excess_risk"
"""R̃ − R_min = (R − R_min) + (η/4)‖∇R‖², recorded along the modified flow (R̃ itself for a
network with an activation, whose R_min is unknown)."""

MODIFIED_GRAD = "modified_grad_norm_sq"
"""‖∇R̃‖² = ‖∇R + (η/2)∇²R ∇R‖², recorded along the modified flow (the scale of its checks)."""


class GradientFlow(eqx.Module):
    """dW/dt = −∇R, dE/dt = ‖∇R‖²."""

    RECORDS: ClassVar[tuple] = ()
    dt0: ClassVar[None] = None

    def field(self, t, y, args):
        params, _ = y
        static, problem, _ = args
        g = obs.risk_gradient(eqx.combine(params, static), problem)
        return jax.tree.map(jnp.negative, g), obs.squared_norm(g)

    def records(self, y, args) -> dict:
        return {}

    def events(self) -> tuple:
        return ()


def _gradients(params, static, problem, step_size):
    """(∇R, ∇R̃ = ∇R + (η/2)∇²R∇R) at the trainable leaves, as pytrees; the Hessian-vector
    product is a jvp of the gradient."""

    def gradient(q):
        return obs.risk_gradient(eqx.combine(q, static), problem)

    g, hg = jax.jvp(gradient, (params,), (gradient(params),))
    return g, jax.tree.map(lambda a, b: a + 0.5 * step_size * b, g, hg)


class ModifiedFlow(eqx.Module):
    """Gradient flow on R̃ = R + (η/4)‖∇R‖² (first-order backward error analysis, Barrett &
    Dherin 2021): dW/dt = −∇R̃, dE/dt = ‖∇R̃‖². GD with step η follows it to O(η²) over a
    fixed time, where it follows GF only to O(η)."""

    step_size: jax.Array
    dt0: ClassVar[None] = None
    RECORDS: ClassVar[tuple] = (
        obs.Observable(MODIFIED_RISK, None, (), "R̃ − R_min = (R − R_min) + (η/4)‖∇R‖², the function the modified "
                       "flow decreases (R̃ itself for a network with an activation)"),
        obs.Observable(MODIFIED_GRAD, None, (), "‖∇R̃‖², the modified flow's squared speed"),
    )

    def field(self, t, y, args):
        params, _ = y
        static, problem, _ = args
        _, gt = _gradients(params, static, problem, self.step_size)
        return jax.tree.map(jnp.negative, gt), obs.squared_norm(gt)

    def records(self, y, args) -> dict:
        static, problem, _ = args
        model = eqx.combine(y[0], static)
        g, gt = _gradients(y[0], static, problem, self.step_size)
        return {MODIFIED_RISK: obs.suboptimality(model, problem) + 0.25 * self.step_size * obs.squared_norm(g),
                MODIFIED_GRAD: obs.squared_norm(gt)}

    def events(self) -> tuple:
        return ()
