"""Quantities recorded along a trajectory, each a small pure function.

An observable is `fn(model, problem, initial) -> Array` (`initial` is the network at
t = 0, for conserved quantities; a function of `(model, problem)` alone is accepted too).
Its output has fixed extra dimensions named in `dims`: `()` for a scalar, `("layer",)`
for one value per layer, `("interface",)` for one per pair (W_k, W_{k+1}), `("feature",)`
for a vector in R^d. Scenario files refer to observables by their registry name; add your
own with [`register`][].
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from . import linalg
from .models import DeepLinear, end_to_end, row_product, trainable
from .problem import Problem


class Observable(eqx.Module):
    """A named quantity: `fn(model, problem, initial)` and the names of its extra dims."""

    name: str = eqx.field(static=True)
    fn: Callable = eqx.field(static=True)
    dims: tuple[str, ...] = eqx.field(static=True)
    description: str = eqx.field(static=True)

    def __call__(self, model, problem, initial):
        return jnp.asarray(self.fn(model, problem, initial), jnp.float64)


REGISTRY: dict[str, Observable] = {}


def register(name: str, dims: Sequence[str] = (), description: str | None = None):
    """Decorator adding `fn` to the registry under `name` (replacing any previous one).

    **Example:**

        @gflow.observables.register("first_layer_norm")
        def first_layer_norm(model, problem):
            return jnp.linalg.norm(model.layers()[0])
    """

    def decorator(fn: Callable) -> Callable:
        n_args = len(inspect.signature(fn).parameters)
        call = fn if n_args >= 3 else (lambda model, problem, initial: fn(model, problem))
        doc = description or (inspect.getdoc(fn) or "").split("\n")[0]
        REGISTRY[name] = Observable(name, call, tuple(dims), doc)
        return fn

    return decorator


def get(names: Sequence[str]) -> tuple[Observable, ...]:
    """The observables called `names`, with one clear error for an unknown name."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise KeyError(f"unknown observable(s) {unknown}; known: {sorted(REGISTRY)}")
    return tuple(REGISTRY[n] for n in names)


# --- helpers shared by the observables -------------------------------------------------


def flat_risk(model: DeepLinear, problem: Problem):
    """(R as a function of the flat trainable parameters, the flat point itself)."""
    params, static = eqx.partition(model, trainable(model))
    flat, unravel = ravel_pytree(params)

    def risk(x):
        return problem.risk(end_to_end(eqx.combine(unravel(x), static)))

    return risk, flat


def risk_gradient(model: DeepLinear, problem: Problem):
    """∇R with respect to the trainable leaves (a pytree shaped like `model`)."""
    params, static = eqx.partition(model, trainable(model))
    return jax.grad(lambda q: problem.risk(end_to_end(eqx.combine(q, static))))(params)


def squared_norm(tree, log: bool = False) -> jax.Array:
    """Σ of squared entries over a pytree, scaled first so it neither under- nor overflows.

    The entries are divided by their largest modulus m before squaring, so the sum is
    exact to round-off; only the result m²·Σ may underflow (‖∇R‖ ~ 1e-170 on a deep
    plateau). With `log=True` the natural log 2·log m + log Σ is returned instead, which
    never underflows (−inf for an all-zero tree).
    """
    leaves = [x for x in jax.tree.leaves(tree) if x is not None]
    if not leaves:
        return jnp.array(-jnp.inf if log else 0.0)
    scale = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves]))
    safe = jnp.where(scale > 0, scale, 1.0)
    scaled = sum(jnp.sum((x / safe) ** 2) for x in leaves)
    if log:
        return jnp.where(scale > 0, 2 * jnp.log(safe) + jnp.log(scaled), -jnp.inf)
    return safe**2 * scaled


def per_layer(fn: Callable, model: DeepLinear) -> jax.Array:
    """fn(W_k) for k = 1..L, stacked (vmapped inside each block of equal shapes)."""
    return jnp.concatenate([jax.vmap(fn)(b) for b in model.weight_blocks()])


def per_interface(fn: Callable, *models: DeepLinear) -> jax.Array:
    """fn(W_k, W_{k+1}, W'_k, W'_{k+1}, …) for k = 1..L−1, stacked; empty for L = 1.

    With several models (of equal widths), fn gets the pair of each, in order.
    """
    parts = interface_groups(fn, *(m.weight_blocks() for m in models))
    return jnp.concatenate(parts) if parts else jnp.zeros((0,))


def interface_groups(fn: Callable, *block_lists) -> list[jax.Array]:
    """fn over consecutive pairs of layers, for one or more lists of blocks of equal shapes
    (a network's `weight_blocks()`, or the gradient's): one stacked array per group of
    pairs of equal shapes, in interface order (not concatenated: groups may differ in shape)."""
    first = block_lists[0]
    parts = []
    for i in range(len(first)):
        if first[i].shape[0] > 1:
            parts.append(jax.vmap(fn)(*[x for bs in block_lists for x in (bs[i][:-1], bs[i][1:])]))
        if i + 1 < len(first):
            parts.append(jax.vmap(fn)(*[x for bs in block_lists for x in (bs[i][-1:], bs[i + 1][:1])]))
    return parts


def balance(lower, upper):
    """W_{k+1}ᵀ W_{k+1} − W_k W_kᵀ, conserved by gradient flow (theory.md §4)."""
    return upper.T @ upper - lower @ lower.T


# --- the registry ----------------------------------------------------------------------


@register("risk")
def risk(model, problem):
    """R(W) = (1/n)‖y − X w‖²."""
    return problem.risk(end_to_end(model))


@register("excess_risk")
def excess_risk(model, problem):
    """R(W) − R_min, computed without cancellation."""
    return problem.excess_risk(end_to_end(model))


@register("test_risk")
def test_risk(model, problem):
    """Risk on the held-out set (NaN when there is none)."""
    return problem.test_risk(end_to_end(model))


@register("distance_to_pi_star")
def distance_to_pi_star(model, problem):
    """‖w(W) − π*‖."""
    return jnp.linalg.norm(end_to_end(model) - problem.pi_star)


@register("grad_norm_sq")
def grad_norm_sq(model, problem):
    """‖∇R‖² over all trainable parameters."""
    return squared_norm(risk_gradient(model, problem))


@register("pl_ratio")
def pl_ratio(model, problem):
    """‖∇R‖² / (R − R_min), the Polyak–Łojasiewicz ratio.

    Formed in logs, so it stays finite where ‖∇R‖² alone would underflow but the ratio
    does not (e.g. ‖∇R‖² ~ 1e-320 against R − R_min ~ 1e-300 near a minimizer).
    """
    log_g2 = squared_norm(risk_gradient(model, problem), log=True)
    return jnp.exp(log_g2 - jnp.log(excess_risk(model, problem)))


@register("pl_lower_bound")
def pl_lower_bound(model, problem):
    """4 λ ‖pᵀ W_L ⋯ W_2‖², a pointwise lower bound on the PL ratio (theory.md §4)."""
    return jnp.exp(jnp.log(4.0 * problem.lam) + squared_norm(row_product(model, skip=1), log=True))


@register("sharpness")
def sharpness(model, problem):
    """Largest algebraic eigenvalue of the Hessian of R (Lanczos, 40 steps)."""
    f, x = flat_risk(model, problem)
    return linalg.top_hessian_eigenvalue(f, x)


@register("singular_values", dims=("layer",))
def singular_values(model, problem):
    """Top singular value σ_k of each layer."""
    return per_layer(lambda w: linalg.top_singular_triplet(w)[0], model)


@register("weight_norms", dims=("layer",))
def weight_norms(model, problem):
    """Frobenius norm ‖W_k‖_F of each layer."""
    return per_layer(jnp.linalg.norm, model)


@register("rank_one_gap", dims=("layer",))
def rank_one_gap(model, problem):
    """‖W_k‖_F² − ‖W_k‖_2² (zero for a rank-one layer)."""
    return per_layer(lambda w: jnp.sum(jnp.linalg.svd(w, compute_uv=False)[1:] ** 2), model)


@register("alignment", dims=("interface",))
def alignment(model, problem):
    """⟨v_{k+1}, u_k⟩²: top right vector of W_{k+1} against top left vector of W_k."""

    def align(lower, upper):
        u = linalg.top_singular_triplet(lower)[1]
        v = linalg.top_singular_triplet(upper)[2]
        return (v @ u) ** 2

    return per_interface(align, model)


@register("balance_drift", dims=("interface",))
def balance_drift(model, problem, initial):
    """‖D_k(t) − D_k(0)‖_F with D_k = W_{k+1}ᵀW_{k+1} − W_kW_kᵀ (zero along exact GF)."""
    return per_interface(
        lambda a, b, a0, b0: jnp.linalg.norm(balance(a, b) - balance(a0, b0)), model, initial
    )


@register("end_to_end", dims=("feature",))
def end_to_end_regressor(model, problem):
    """The end-to-end regressor w = W_1ᵀ ⋯ W_Lᵀ p."""
    return end_to_end(model)


DEFAULT = (
    "risk",
    "excess_risk",
    "grad_norm_sq",
    "pl_ratio",
    "pl_lower_bound",
    "sharpness",
    "singular_values",
    "rank_one_gap",
    "alignment",
    "balance_drift",
    "distance_to_pi_star",
)


# --- partial products (theory.md §5) -------------------------------------------------------


@register("partial_product_extremes", dims=("layer", "extreme"))
def partial_product_extremes(model, problem):
    """(σ_max, σ_min) of each partial product W_k ⋯ W_1 (residual lemma, theory.md §5)."""
    out, P = [], None
    for w in model.layers():
        P = w if P is None else w @ P
        s = jnp.linalg.svd(P, compute_uv=False)
        out.append(jnp.stack([s[0], s[-1]]))
    return jnp.stack(out)
