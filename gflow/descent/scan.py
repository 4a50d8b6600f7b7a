"""The pure core of gradient descent: one run as a nested `lax.scan`, a grid of runs under `vmap`.

One run is a `lax.scan` over steps (nested: an outer scan over records, an inner one over
the `record_every` steps between them), so observables cost only where they are kept. A
grid of runs is that scan under two `vmap`s, over step sizes and over initializations, in
one compiled call per [`GridSettings`][]. The steps between records run in one of two
kernels: "fused" (`gflow.descent.fused`: a linear network's gradient written out on the
sufficient statistics, runs vectorized with the run axis last; the default) or "autodiff"
(`jax.value_and_grad` of the risk at every step, the general path: networks with an
activation and runs that track the balance identity take it). Everything here is pure
and traced; validation and the Dataset live in `gflow.descent.run`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import linalg, observables as obs
from ..models import DeepLinear, end_to_end
from ..problem import Problem
from ..trajectory import BALANCE_RESIDUAL, MAX_WEIGHT_SQ
from . import fused


class Descent(NamedTuple):
    """One GD run, as [`descend`][] returns it.

    - `final_params`: the trainable leaves after the last step (frozen at a divergence).
    - `diverged_at`: the step at which the run diverged; −1 when it never did.
    - `progress_at_half`: at step `steps // 2`, what decides convergence (for the "stalled"
      status): the excess risk of a linear network, ‖∇R‖² of one with an activation.
    - `records`: observable name → array with a leading record axis (NaN from the divergence on).
    """

    final_params: DeepLinear
    diverged_at: jax.Array
    progress_at_half: jax.Array
    records: dict[str, jax.Array]


class GridResult(NamedTuple):
    """A grid of runs from [`grid`][]: the fields of [`Descent`][] with leading axes
    (step size, initialization), and `final`: the [`final_quantities`][] and (when asked)
    sharpness at the end of each run, NaN for a diverged run."""

    final_params: DeepLinear
    diverged_at: jax.Array
    progress_at_half: jax.Array
    final: dict[str, jax.Array]
    records: dict[str, jax.Array]


class InitialQuantities(NamedTuple):
    """Risk R(W(0)) and sharpness S(W(0)) (NaN when not asked) of each initialization."""

    risk: jax.Array
    sharpness: jax.Array


class GridSettings(eqx.Module):
    """The static settings of one compiled grid: a new value compiles a new program.

    - `steps`, `record_every`: GD steps, and steps between records.
    - `observables`: the registry `Observable`s recorded.
    - `record_weights`: also record the flat trainable parameters (`weights`).
    - `final_sharpness`: compute the Lanczos sharpness at the end of each run.
    - `lanczos_steps`: Lanczos steps of that sharpness.
    - `track_balance`: carry η²Σ_j(G_{k+1}ᵀG_{k+1} − G_kG_kᵀ) along the run and record how far
      D_k(t) − D_k(0) is from it (`balance_residual`; see [`BalanceTracker`][]).
    - `kernel`: how a step computes R and ∇R ([`KERNELS`][]): "fused" (a linear network's
      gradient written out on the sufficient statistics, `gflow.descent.fused`) or
      "autodiff" (`jax.value_and_grad` of the risk at every step, the general path, which a
      network with an activation and a run with `track_balance` always take).
    """

    steps: int = eqx.field(static=True)
    record_every: int = eqx.field(static=True)
    observables: tuple[obs.Observable, ...] = eqx.field(static=True)
    record_weights: bool = eqx.field(static=True)
    final_sharpness: bool = eqx.field(static=True)
    lanczos_steps: int = eqx.field(static=True)
    track_balance: bool = eqx.field(static=True, default=False)
    kernel: str = eqx.field(static=True, default="fused")

    def __check_init__(self):
        check_kernel(self.kernel)




class BalanceTracker(NamedTuple):
    """What GD carries to test itself against an exact identity (theory.md §8).

    One GD step changes D_k = W_{k+1}ᵀW_{k+1} − W_kW_kᵀ by exactly η²(G_{k+1}ᵀG_{k+1} − G_kG_kᵀ),
    G_k = ∂R/∂W_k (the first-order terms cancel). `increments` sums those terms per
    interface (one array per group of equal shapes); `max_weight_sq` is the largest Σ_k‖W_k‖_F²
    seen, the scale of the round-off.
    """

    increments: list[jax.Array]
    max_weight_sq: jax.Array

    @staticmethod
    def start(model: DeepLinear) -> BalanceTracker:
        zero = [jnp.zeros_like(d) for d in obs.interface_groups(obs.balance, model.weight_blocks())]
        return BalanceTracker(zero, _weight_sq(model))

    def step(self, model: DeepLinear, grad: DeepLinear, step_size, live) -> BalanceTracker:
        """After the step from `model` along `grad` (a network whose parameter blocks are
        the G_k); nothing changes for a frozen (diverged) run."""
        terms = obs.interface_groups(obs.balance, grad.parameter_blocks())
        scale = jnp.where(live, step_size**2, 0.0)
        acc = [a + scale * t for a, t in zip(self.increments, terms)]
        return BalanceTracker(acc, jnp.maximum(self.max_weight_sq, _weight_sq(model)))

    def residual(self, model: DeepLinear, initial: DeepLinear) -> jax.Array:
        """‖D_k(W) − D_k(W(0)) − η²Σ(…)‖_F per interface."""
        now = obs.interface_groups(obs.balance, model.weight_blocks())
        start = obs.interface_groups(obs.balance, initial.weight_blocks())
        parts = [jnp.linalg.norm(d - d0 - a, axis=(-2, -1)) for d, d0, a in zip(now, start, self.increments)]
        return jnp.concatenate(parts) if parts else jnp.zeros((0,))


def _weight_sq(model: DeepLinear) -> jax.Array:
    return sum(jnp.sum(b**2) for b in model.weight_blocks())


def final_quantities(model: DeepLinear) -> tuple[str, str]:
    """What a GD run reports at its end besides sharpness, the first deciding "converged":
    (excess_risk, distance_to_pi_star) for a linear network, (grad_norm_sq, risk) for one
    with an activation (its R_min is unknown: it converges on ‖∇R‖²)."""
    return ("excess_risk", "distance_to_pi_star") if model.is_linear else ("grad_norm_sq", "risk")


def _objective(params, static, problem):
    """What GD differentiates: the excess risk of a linear network (exact, so a converged
    run is not hidden by the round-off of R_min), the risk of one with an activation."""
    model = eqx.combine(params, static)
    if model.is_linear:
        return problem.excess_risk(end_to_end(model, unroll=model.depth <= 64))
    return obs.risk_of(model, problem)


def _risk(value, static, problem):
    """R from the value of [`_objective`][]."""
    return problem.R_min + value if static.is_linear else value


def _sharpness(params, static, problem, lanczos_steps):
    f, x = obs.flat_risk(eqx.combine(params, static), problem)
    return linalg.top_hessian_eigenvalue(f, x, lanczos_steps)


def _diverging(risk, diverge_above):
    """Whether the risk is non-finite or above `diverge_above`."""
    return ~jnp.isfinite(risk) | (risk > diverge_above)


KERNELS = ("fused", "autodiff")
"""How GD steps compute R and ∇R (see [`GridSettings`][]); "fused" is the default."""


def check_kernel(kernel: str) -> None:
    """A `ValueError` unless `kernel` is one of `KERNELS`."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}; got {kernel!r}.")


def _recorder(static, problem, initial, diverge_above, observables, record_weights: bool):
    """`record(q, k, div, track)`: what one record of a run keeps (NaN once it diverged)."""

    def record(q, k, div, track):
        model = eqx.combine(q, static)
        out = {o.name: o(model, problem, initial) for o in observables}
        if record_weights:
            out["weights"] = ravel_pytree(q)[0]
        if track is not None:
            out[BALANCE_RESIDUAL] = track.residual(model, initial)
            out[MAX_WEIGHT_SQ] = jnp.maximum(track.max_weight_sq, _weight_sq(model))
        gone = ((div >= 0) & (div <= k)) | _diverging(_risk(_objective(q, static, problem), static, problem), diverge_above)
        return {name: jnp.where(gone, jnp.nan, v) for name, v in out.items()}

    return record


def record_steps(steps: int, every: int) -> np.ndarray:
    """The steps recorded by [`descend`][]: 0, r, 2r, … ≤ steps, then `steps` if not among them."""
    ks = np.arange(steps // every + 1) * every
    return ks if ks[-1] == steps else np.append(ks, steps)


def _stepper(params, static, problem, step_size, diverge_above, half: int, *, kernel: str, track_balance: bool):
    """(advance, start, weights) of [`descend`][]: `advance(carry, length)` takes `length`
    GD steps of the carry (x, k, diverged_at, progress_at_half, balance tracker), `start` is
    x at step 0 and `weights(x)` the trainable leaves. The fused kernel's x is its own
    layout of the weights ([`fused.Layout`][gflow.descent.fused.Layout]); the autodiff
    kernel's x is the leaves themselves."""
    if kernel == "fused" and fused.supports(eqx.combine(params, static)) and not track_balance:
        layout = fused.Layout(params, static)

        def advance(carry, length):
            x, k, div, mid, track = carry
            out = fused.steps(layout, length, half)((x, k, div, mid), step_size, diverge_above, static.p, problem)
            return (*out, track)

        return advance, layout.start(params), layout.params

    value_and_grad = jax.value_and_grad(_objective)

    def step(carry, _):
        q, k, div, mid, track = carry
        e, g = value_and_grad(q, static, problem)
        div = jnp.where((div < 0) & _diverging(_risk(e, static, problem), diverge_above), k, div)
        live = div < 0
        if track is not None:
            track = track.step(eqx.combine(q, static), eqx.combine(g, static), step_size, live)
        q = jax.tree.map(lambda x, gx: jnp.where(live, x - step_size * gx, x), q, g)
        mid = jnp.where(k == half, e if static.is_linear else obs.squared_norm(g), mid)
        return (q, k + 1, div, mid, track), None

    def advance(carry, length):
        return jax.lax.scan(step, carry, None, length=length)[0]

    return advance, params, lambda q: q


def descend(
    params,
    static: DeepLinear,
    problem: Problem,
    step_size,
    diverge_above,
    *,
    steps: int,
    record_every: int,
    observables: tuple[obs.Observable, ...] = (),
    record_weights: bool = False,
    track_balance: bool = False,
    kernel: str = "fused",
) -> Descent:
    """`steps` steps of GD from `eqx.combine(params, static)`, pure and jittable.

    At step k (0-based) the risk R(W_k) is checked first: if it is non-finite or above
    `diverge_above`, the run is frozen at W_k and `diverged_at = k`; otherwise
    W_{k+1} = W_k − η∇R(W_k). W_steps is checked the same way.

    **Arguments:**

    - `params`, `static`: the trainable leaves and the rest (`eqx.partition`).
    - `problem`: the regression problem.
    - `step_size`: η (a traced scalar: vmap over it).
    - `diverge_above`: risk threshold for divergence (traced scalar).
    - `steps`, `record_every`: static ints; records at [`record_steps`][]`(steps, record_every)`.
    - `observables`: registry `Observable`s computed at the records.
    - `record_weights`: also record the flat trainable parameters.
    - `track_balance`: also record `balance_residual` and `max_weight_sq` ([`BalanceTracker`][]).
    - `kernel`: how a step computes R and ∇R, "fused" or "autodiff" ([`GridSettings`][]);
      the two agree to round-off (and, where GD amplifies round-off, as closely as two
      batch shapes of the autodiff path agree with each other).

    **Returns:** a [`Descent`][].
    """
    initial = eqx.combine(params, static)
    half = steps // 2
    advance, start, weights = _stepper(params, static, problem, step_size, diverge_above, half,
                                       kernel=kernel, track_balance=track_balance)
    record = _recorder(static, problem, initial, diverge_above, observables, record_weights)

    # One loop makes every record, so the observables (a Lanczos eigensolver each, for
    # sharpness) are compiled once: before each record it advances the steps since the
    # last one (0 before step 0, `record_every`, then any remainder), by a branch per length.
    gaps = np.diff(record_steps(steps, record_every), prepend=0)
    lengths, which = np.unique(gaps, return_inverse=True)
    branches = [functools.partial(advance, length=int(n)) if n else (lambda carry: carry) for n in lengths]

    def chunk(carry, branch):
        carry = jax.lax.switch(branch, branches, carry)
        x, k, div, _mid, track = carry
        return carry, record(weights(x), k, div, track)

    track = BalanceTracker.start(initial) if track_balance else None
    carry = (start, jnp.array(0), jnp.array(-1), jnp.array(jnp.nan), track)
    carry, recs = jax.lax.scan(chunk, carry, jnp.asarray(which, jnp.int32))
    x, k, div, mid, _ = carry
    q = weights(x)
    div = jnp.where((div < 0) & _diverging(_risk(_objective(q, static, problem), static, problem), diverge_above), k, div)
    return Descent(q, div, mid, recs)


@eqx.filter_jit
def grid(params, static, problem, step_sizes, thresholds, settings: GridSettings) -> GridResult:
    """[`descend`][] under `vmap` over `step_sizes` (outer) and initializations (inner:
    the leading axis of `params` and of `thresholds`), plus the end-of-run quantities."""

    def one(q, eta, thr):
        run = descend(
            q, static, problem, eta, thr, steps=settings.steps, record_every=settings.record_every,
            observables=settings.observables, record_weights=settings.record_weights,
            track_balance=settings.track_balance, kernel=settings.kernel,
        )
        model = eqx.combine(run.final_params, static)
        if static.is_linear:
            w = end_to_end(model)
            final = dict(excess_risk=problem.excess_risk(w), distance_to_pi_star=jnp.linalg.norm(w - problem.pi_star))
        else:
            final = dict(grad_norm_sq=obs.grad_norm_sq(model, problem), risk=obs.risk_of(model, problem))
        if settings.final_sharpness:
            final["sharpness"] = _sharpness(run.final_params, static, problem, settings.lanczos_steps)
        gone = run.diverged_at >= 0
        final = {k: jnp.where(gone, jnp.nan, v) for k, v in final.items()}
        return GridResult(run.final_params, run.diverged_at, run.progress_at_half, final, run.records)

    over_inits = jax.vmap(one, in_axes=(0, None, 0))
    return jax.vmap(over_inits, in_axes=(None, 0, None))(params, step_sizes, thresholds)


@eqx.filter_jit
def initial_quantities(params, static, problem, lanczos_steps: int, sharpness: bool) -> InitialQuantities:
    """R(W(0)) and, when `sharpness`, S(W(0)) of each initialization (leading axis of `params`)."""

    def one(q):
        risk = _risk(_objective(q, static, problem), static, problem)
        s = _sharpness(q, static, problem, lanczos_steps) if sharpness else jnp.nan
        return InitialQuantities(risk, s)

    return jax.vmap(one)(params)
