"""Quantities recorded along a trajectory, each a small pure function.

An observable is `fn(model, problem, initial) -> Array` (`initial` is the network at
t = 0, for conserved quantities; a function of `(model, problem)` alone is accepted too).
Its output has fixed extra dimensions named in `dims`: `()` for a scalar, `("layer",)`
for one value per layer, `("interface",)` for one per pair (W_k, W_{k+1}), `("feature",)`
for a vector in R^d, `("sample",)` for one per training sample. Scenario files refer to
observables by their registry name; add your own with [`register`][].

Some observables are defined for linear networks only (they need the end-to-end regressor,
R_min or the conservation law); their `linear_only` says why, and [`get`][] refuses them for
a network with an activation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from . import linalg
from .models import DeepLinear, end_to_end, n_trainable, outputs, row_product, trainable
from .problem import Problem


class Observable(eqx.Module):
    """A named quantity: `fn(model, problem, initial)`, the names of its extra dims, and
    `linear_only`: None when defined for any network, else why it needs a linear one."""

    name: str = eqx.field(static=True)
    fn: Callable = eqx.field(static=True)
    dims: tuple[str, ...] = eqx.field(static=True)
    description: str = eqx.field(static=True)
    linear_only: str | None = eqx.field(static=True, default=None)

    def __call__(self, model, problem, initial):
        return jnp.asarray(self.fn(model, problem, initial), jnp.float64)

    @property
    def portable_name(self) -> str | None:
        """Its name, for gflow's own observables (the same code in every process at the same
        gflow source); None for one registered by the user (`compilation.exported`)."""
        built_in = BUILT_IN.get(self.name)
        ours = built_in is not None and built_in.fn is self.fn and built_in.dims == self.dims
        return f"observable:{self.name}" if ours else None


REGISTRY: dict[str, Observable] = {}
BUILT_IN: dict[str, Observable] = {}
"""The observables that gflow's own modules register (a user's re-registration replaces
the name in `REGISTRY` only)."""


def register(name: str, dims: Sequence[str] = (), description: str | None = None, linear_only: str | None = None):
    """Decorator adding `fn` to the registry under `name` (replacing any previous one).
    `linear_only`: why the quantity is defined for linear networks only (None: any network).

    **Example:**

        @gflow.observables.register("first_layer_norm")
        def first_layer_norm(model, problem):
            return jnp.linalg.norm(model.layers()[0])
    """

    def decorator(fn: Callable) -> Callable:
        n_args = len(inspect.signature(fn).parameters)
        call = fn if n_args >= 3 else (lambda model, problem, initial: fn(model, problem))
        doc = description or (inspect.getdoc(fn) or "").split("\n")[0]
        REGISTRY[name] = Observable(name, call, tuple(dims), doc, linear_only)
        if fn.__module__.partition(".")[0] == "gflow":
            BUILT_IN[name] = REGISTRY[name]
        return fn

    return decorator


def get(names: Sequence[str] | None, network: DeepLinear | None = None) -> tuple[Observable, ...]:
    """The observables called `names` (None: [`defaults`][] for `network`), with one clear
    error for an unknown name (`KeyError`) and, given the `network`, one for an observable
    it does not have (`ValueError`, naming the observable and why)."""
    if names is None:
        names = defaults(network)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise KeyError(f"unknown observable(s) {unknown}; known: {sorted(REGISTRY)}")
    if network is not None:
        refuse(names, network.activation)
    return tuple(REGISTRY[n] for n in names)


def refuse(names: Sequence[str], activation: str) -> None:
    """`ValueError` naming the first of `names` that a network with `activation` lacks."""
    if activation == "linear":
        return
    for n in names:
        why = REGISTRY[n].linear_only if n in REGISTRY else None
        if why is not None:
            raise ValueError(f"observable {n!r} is defined for linear networks only: {why} (this one has {activation} activations)")


def applicable(names: Sequence[str], activation: str) -> list[str]:
    """The names of `names` that a network with `activation` has."""
    return [n for n in names if activation == "linear" or REGISTRY[n].linear_only is None]


def defaults(network: DeepLinear | None = None) -> tuple[str, ...]:
    """What is recorded unless asked otherwise: `DEFAULT`, less what `network` lacks."""
    return tuple(applicable(DEFAULT, "linear" if network is None else network.activation))


# --- helpers shared by the observables -------------------------------------------------


def risk_of(model: DeepLinear, problem: Problem) -> jax.Array:
    """R(W) = (1/n)‖y − f(X)‖²: from the sufficient statistics for a linear network (exact,
    O(d²)), from the data for a network with an activation (it has no regressor w)."""
    if model.is_linear:
        return problem.risk(end_to_end(model))
    return jnp.mean((problem.y - outputs(model, problem.X)) ** 2)


def suboptimality(model: DeepLinear, problem: Problem) -> jax.Array:
    """R − R_min for a linear network (free of cancellation); R itself for a network with an
    activation, whose R_min is unknown (R ≥ its floor ≥ 0). What the clocks measure progress by."""
    if model.is_linear:
        return problem.excess_risk(end_to_end(model))
    return risk_of(model, problem)


def flat_risk(model: DeepLinear, problem: Problem, unroll: bool = False):
    """(R as a function of the flat trainable parameters, the flat point itself). `unroll`:
    a linear network's layer loop written out (`end_to_end(unroll=True)`): the same
    function, with faster Hessian-vector products at small depth (see `UNROLL_DEPTH`)."""
    params, static = eqx.partition(model, trainable(model))
    flat, unravel = ravel_pytree(params)

    def risk(x):
        network = eqx.combine(unravel(x), static)
        return problem.risk(end_to_end(network, unroll=True)) if unroll and model.is_linear else risk_of(network, problem)

    return risk, flat


def risk_gradient(model: DeepLinear, problem: Problem):
    """∇R with respect to the trainable leaves (a pytree shaped like `model`)."""
    params, static = eqx.partition(model, trainable(model))
    return jax.grad(lambda q: risk_of(eqx.combine(q, static), problem))(params)


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


_NO_REGRESSOR = "a network with an activation computes no linear map, so it has no end-to-end regressor w"
_NO_R_MIN = "R_min of a network with an activation is unknown (it may fit better than π*)"


@register("risk")
def risk(model, problem):
    """R(W) = (1/n)‖y − f(X)‖² (f(X) = X w for a linear network)."""
    return risk_of(model, problem)


@register("excess_risk", linear_only=_NO_R_MIN)
def excess_risk(model, problem):
    """R(W) − R_min, computed without cancellation."""
    return problem.excess_risk(end_to_end(model))


@register("test_risk")
def test_risk(model, problem):
    """Risk on the held-out set (NaN when there is none)."""
    if model.is_linear:
        return problem.test_risk(end_to_end(model))
    if problem.X_test.shape[0] == 0:
        return jnp.array(jnp.nan)
    return jnp.mean((problem.y_test - outputs(model, problem.X_test)) ** 2)


@register("outputs", dims=("sample",))
def network_outputs(model, problem):
    """The network's outputs f(x_i) on the training samples."""
    return outputs(model, problem.X)


@register("distance_to_pi_star", linear_only=_NO_REGRESSOR)
def distance_to_pi_star(model, problem):
    """‖w(W) − π*‖."""
    return jnp.linalg.norm(end_to_end(model) - problem.pi_star)


@register("grad_norm_sq")
def grad_norm_sq(model, problem):
    """‖∇R‖² over all trainable parameters."""
    return squared_norm(risk_gradient(model, problem))


@register("pl_ratio", linear_only=_NO_R_MIN)
def pl_ratio(model, problem):
    """‖∇R‖² / (R − R_min), the Polyak–Łojasiewicz ratio.

    Formed in logs, so it stays finite where ‖∇R‖² alone would underflow but the ratio
    does not (e.g. ‖∇R‖² ~ 1e-320 against R − R_min ~ 1e-300 near a minimizer).
    """
    log_g2 = squared_norm(risk_gradient(model, problem), log=True)
    return jnp.exp(log_g2 - jnp.log(excess_risk(model, problem)))


@register("pl_lower_bound", linear_only="a bound proved for linear networks (theory.md §4)")
def pl_lower_bound(model, problem):
    """4 λ ‖pᵀ W_L ⋯ W_2‖², a pointwise lower bound on the PL ratio (theory.md §4)."""
    return jnp.exp(jnp.log(4.0 * problem.lam) + squared_norm(row_product(model, skip=1), log=True))


@register("sharpness")
def sharpness(model, problem):
    """Largest algebraic eigenvalue of the Hessian of R (Lanczos on Hessian-vector products
    until converged; along a solve, from the eigenvector at the previous save)."""
    return hessian_top(model, problem, 1).values[0]


@register("singular_values", dims=("layer",))
def singular_values(model, problem):
    """Top singular value σ_k of each layer (from `linalg.top_singular_triplet`, which
    `rank_one_gap` and `alignment` compute too: XLA computes it once for all three. Alone,
    at width 50, it costs 2.8× LAPACK's values-only SVD: docs/design.md, "Where the time goes")."""
    return per_layer(lambda w: linalg.top_singular_triplet(w)[0], model)


@register("weight_norms", dims=("layer",))
def weight_norms(model, problem):
    """Frobenius norm ‖W_k‖_F of each layer."""
    return per_layer(jnp.linalg.norm, model)


@register("rank_one_gap", dims=("layer",))
def rank_one_gap(model, problem):
    """‖W_k‖_F² − ‖W_k‖_2² (zero for a rank-one layer), as ‖W_k − σ₁u₁v₁ᵀ‖_F²: no
    cancellation, and as exact as the singular values' own squares (docs/theory.md §4)."""
    return per_layer(linalg.rank_one_residual, model)


@register("alignment", dims=("interface",))
def alignment(model, problem):
    """⟨v_{k+1}, u_k⟩²: top right vector of W_{k+1} against top left vector of W_k (each
    layer's top vectors computed once, not once per interface it borders)."""
    lefts, rights = zip(*[jax.vmap(linalg.top_singular_triplet)(b)[1:] for b in model.weight_blocks()])
    parts = interface_groups(lambda u_lower, u_upper, v_lower, v_upper: (v_upper @ u_lower) ** 2, lefts, rights)
    return jnp.concatenate(parts) if parts else jnp.zeros((0,))


@register("balance_drift", dims=("interface",), linear_only="GELU is not homogeneous: D_k is not conserved (theory.md §10)")
def balance_drift(model, problem, initial):
    """‖D_k(t) − D_k(0)‖_F with D_k = W_{k+1}ᵀW_{k+1} − W_kW_kᵀ (zero along exact GF)."""
    return per_interface(
        lambda a, b, a0, b0: jnp.linalg.norm(balance(a, b) - balance(a0, b0)), model, initial
    )


@register("end_to_end", dims=("feature",), linear_only=_NO_REGRESSOR)
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


@register("partial_product_extremes", dims=("layer", "extreme"),
          linear_only="the partial products W_k ⋯ W_1 are maps of the network only when it is linear")
def partial_product_extremes(model, problem):
    """(σ_max, σ_min) of each partial product W_k ⋯ W_1 (residual lemma, theory.md §5)."""
    out, P = [], None
    for w in model.layers():
        P = w if P is None else w @ P
        s = linalg.svdvals(P)
        out.append(jnp.stack([s[0], s[-1]]))
    return jnp.stack(out)


# --- the top of the Hessian's spectrum (theory.md §11) --------------------------------------

TOP_EIGENVALUES = 5
"""How many of the Hessian's largest eigenvalues `top_eigenvalues` records."""


@register("top_eigenvalues", dims=("eigenvalue",))
def top_eigenvalues(model, problem):
    """The 5 largest algebraic Hessian eigenvalues, descending (block Lanczos until converged;
    along a solve, from the eigenvectors at the previous save; NaN past the number of
    parameters)."""
    return padded_to_top(hessian_top(model, problem, top_count(model)).values)


def top_count(model) -> int:
    """How many eigenvalues `top_eigenvalues` computes: 5, or the number of parameters."""
    return min(TOP_EIGENVALUES, n_trainable(model))


def padded_to_top(values):
    """`values` padded with NaN to `TOP_EIGENVALUES` entries (a fixed shape to record)."""
    return jnp.concatenate([values, jnp.full(TOP_EIGENVALUES - values.shape[0], jnp.nan)])


UNROLL_DEPTH = 16
"""Up to this depth, the Hessian products of a linear network run through the layers in
straight-line code (`row_product(unroll=True)`) rather than a `lax.scan`: 2–3× faster
products at the paper's size, for a little more compile time (see [`flat_risk`][])."""


def hessian_top(model: DeepLinear, problem: Problem, k: int, previous=None) -> linalg.Eigenpairs:
    """The k largest algebraic eigenpairs of ∇²R at `model` (flat trainable parameters),
    by [`linalg.lanczos_top`][] on Hessian-vector products: from fixed pseudo-random vectors
    (deterministic), or warm from `previous`, the eigenvectors (rows) at a nearby point
    such as the previous save (rows of NaN: none yet). Converged to
    `linalg.LANCZOS_TOL`, or after 40 + 20k products."""
    f, x = flat_risk(model, problem, unroll=model.depth <= UNROLL_DEPTH)
    _, lin = jax.linearize(jax.grad(f), x)  # one linearization, reused by every product
    if previous is None:
        previous = jnp.full((k, x.size), jnp.nan, x.dtype)
    return linalg.lanczos_top(lin, linalg.warm_start(previous), 40 + 20 * k)
