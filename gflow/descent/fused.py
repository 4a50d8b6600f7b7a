"""The fused GD kernel of a linear network: its gradient written out on the sufficient
statistics, many runs advanced together with the run axis last.

The risk of a linear network depends on the data only through Σ̂ = XᵀX/n and π*: the
value GD differentiates is R − R_min = eᵀΣ̂e with e = w − π* and w = W_1ᵀ⋯W_Lᵀp, so
∇_w = 2Σ̂e and

    ∂R/∂W_k = a_k c_kᵀ,  a_k = pᵀW_L⋯W_{k+1} (a_L = p, a_0 = wᵀ),  c_k = W_{k−1}⋯W_1∇_w (c_1 = ∇_w):

a backward chain of vector–matrix products, a forward one and outer products, O(number of
parameters) per step and no pass over X. These are the products that reverse-mode
autodiff of the same value forms, so the two agree to round-off (tests/test_descent.py
holds them together).

Why the layout: under `vmap` every product above is a batch of tiny (5 × 5) matrix–vector
products, which XLA's CPU backend runs one run at a time. With the run axis last, each is
a handful of multiply–adds over contiguous rows of all runs, vectorized across runs. So
[`steps`][] is a `jax.custom_batching.custom_vmap` function: one run is the same code with
a run axis of length 1, and under `vmap` the batch axis is moved last once per call (not
per step). Nested `vmap`s batch the rule itself, with the outer axes leading.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..models import MLP, DeepLinear, Residual
from ..problem import Problem

UNROLL_TERMS = 512
"""A network whose layers have at most this many rows and columns in all (Σ_k d_{k−1} + d_k:
the terms of its products, written out) has its loops over layers written out; a larger
one runs the layers of a block in a `lax.scan`, so compile time stays flat in depth and
width (the paper's MLP has 96, a residual network of depth 40 on d = 5 has 400)."""


def supports(model: DeepLinear) -> bool:
    """Whether the fused kernel runs `model`: a linear MLP or residual network (whose
    weights are their parameters, or I plus them). Anything else takes autodiff."""
    return model.is_linear and isinstance(model, MLP | Residual)


class Layout:
    """Where the kernel keeps the trainable parameters of one run: one array per layer
    when `unroll` (at most [`UNROLL_TERMS`][] terms), else the parameter blocks; and what each
    weight adds to its parameter (`offsets`: None for an MLP, I for a residual network's
    W_k = I + V_k, exactly as its `weight_blocks` adds it)."""

    def __init__(self, params, static: DeepLinear):
        model = eqx.combine(params, static)
        blocks = model.parameter_blocks()
        self.template = params
        self.sizes = tuple(b.shape[0] for b in blocks)
        widths = model.widths
        self.unroll = sum(widths[:-1]) + sum(widths[1:]) <= UNROLL_TERMS
        with jax.ensure_compile_time_eval():
            zero = eqx.tree_at(lambda m: m.parameter_blocks(), model, tuple(np.zeros(b.shape) for b in blocks))
            offsets = [np.asarray(o) for o in zero.weight_blocks()]
        if self.unroll:
            offsets = [o[i] for o in offsets for i in range(o.shape[0])]
        self.offsets = tuple(o if np.any(o) else None for o in offsets)

    def start(self, params) -> tuple:
        """The kernel's state of the trainable leaves `params` (of one run)."""
        blocks = params.parameter_blocks()
        return tuple(b[i] for b in blocks for i in range(b.shape[0])) if self.unroll else tuple(blocks)

    def params(self, state):
        """The trainable leaves of a state (of one run)."""
        if self.unroll:
            cuts = np.cumsum([0, *self.sizes])
            state = [jnp.stack(state[i:j]) for i, j in zip(cuts[:-1], cuts[1:])]
        return eqx.tree_at(lambda q: q.parameter_blocks(), self.template, tuple(state))


def steps(layout: Layout, length: int, half: int):
    """`advance(carry, step_size, diverge_above, p, problem)`: `length` GD steps of one run
    (vmap it for many), `carry` = (state, k, diverged_at, progress_at_half) as
    `gflow.descent.scan.descend` carries them, with its semantics: at step k the risk
    R(W_k) = R_min + (R − R_min) is checked first; a non-finite risk or one above
    `diverge_above` freezes the run and sets diverged_at = k; the excess risk at k = `half`
    is kept."""

    def run(carry, step_size, diverge_above, p, problem):
        return _advance(carry, step_size, diverge_above, p, problem, layout, length, half)

    def one_run(carry, step_size, diverge_above, p, problem):
        last = jax.tree.map(lambda v: jnp.asarray(v)[..., None], (carry, step_size, diverge_above))
        return jax.tree.map(lambda v: v[..., 0], run(*last, p, problem))

    advance = jax.custom_batching.custom_vmap(one_run)

    @advance.def_vmap
    def batched(axis_size, in_batched, carry, step_size, diverge_above, p, problem):
        if any(jax.tree.leaves(in_batched[3:])):  # a batch of problems: one run at a time
            axes = tuple(jax.tree.map(lambda b: 0 if b else None, ib) for ib in in_batched)
            out = jax.vmap(one_run, in_axes=axes)(carry, step_size, diverge_above, p, problem)
            return out, jax.tree.map(lambda _: True, out)

        def to_last(v, b):
            v = jnp.asarray(v)
            return jnp.moveaxis(v, 0, -1) if b else jnp.broadcast_to(v[..., None], (*v.shape, axis_size))

        (x, k, div, mid), step_size, diverge_above = jax.tree.map(
            to_last, (carry, step_size, diverge_above), tuple(in_batched[:3]))
        k_batched = in_batched[0][1]
        if not k_batched:  # the step counter of all runs: one scalar
            k = k[..., 0]
        x, k, div, mid = run((x, k, div, mid), step_size, diverge_above, p, problem)
        out = jax.tree.map(lambda v: jnp.moveaxis(v, -1, 0), (x, div, mid))
        batched = (jax.tree.map(lambda _: True, out[0]), k_batched, True, True)
        return (out[0], jnp.moveaxis(k, -1, 0) if k_batched else k, *out[1:]), batched

    return advance


def _advance(carry, step_size, diverge_above, p, problem: Problem, layout: Layout, length: int, half: int):
    """`length` steps of every run; every array has the run axis last."""
    x, k, div, mid = carry
    offsets = [None if o is None else o[..., None] for o in layout.offsets]

    def step(carry, _):
        x, k, div, mid = carry
        weights = [P if O is None else P + O for P, O in zip(x, offsets)]
        e, grads, ready = _value_and_grad(weights, p, problem, layout.unroll)
        div = jnp.where((div < 0) & (~jnp.isfinite(problem.R_min + e) | (problem.R_min + e > diverge_above)), k, div)
        live = (div < 0) & ready
        x = tuple(jnp.where(live, w - step_size * g, w) for w, g in zip(x, grads))
        mid = jnp.where(k == half, e, mid)
        return (x, k + 1, div, mid), None

    return jax.lax.scan(step, (x, k, div, mid), None, length=length)[0]


def _value_and_grad(weights: Sequence[jax.Array], p, problem: Problem, unroll: bool):
    """(R − R_min, ∂R/∂P per layer or block, `ready`) of every run (run axis last).

    `ready` is always True, but it is computed from the last product that reads the
    weights: a step that updates under it visibly comes after every read, so XLA updates
    the carried weights in place rather than copying every layer at every step.
    """
    n_runs = weights[0].shape[-1]
    rows, columns = (_layer_rows, _layer_columns) if unroll else (_block_rows, _block_columns)
    r = jnp.broadcast_to(p[:, None], (p.shape[0], n_runs))
    a = [None] * len(weights)
    for j in reversed(range(len(weights))):
        a[j], r = rows(weights[j], r)
    e = r - problem.pi_star[:, None]
    s = problem.sigma @ e
    value = jnp.sum(e * s, axis=0)
    c = [2.0 * s]
    for W in weights[:-1]:
        cols, c_next = columns(W, c[-1])
        c[-1] = cols
        c.append(c_next)
    if not unroll:
        c[-1] = columns(weights[-1], c[-1])[0]
    last = c[-1] if unroll else c[-1][-1]
    ready = jnp.isnan(last[0]) | ~jnp.isnan(last[0])
    grads = tuple(a_j[..., :, None, :] * c_j[..., None, :, :] for a_j, c_j in zip(a, c))
    return value, grads, ready


def _stored(v):
    """`v`, computed once and stored. XLA's CPU fusion treats products as cheap and
    recomputes a producer inside every consumer that reads it; the consumers of a chain
    vector read each entry several times, so left alone, every product of the chain is
    recomputed several times over. Dividing by a 1 that XLA cannot see is 1 (v / 1 == v
    exactly, NaN and ±inf included) makes it expensive in XLA's eyes, so it is computed
    once. The 1 is made from v itself (isnan(v) or not): a 1 broadcast from elsewhere
    would be turned into a multiplication by its reciprocal, which is cheap again."""
    return v / (jnp.isnan(v) | ~jnp.isnan(v)).astype(v.dtype)


def _vecmat(r, W):
    """r W for rows r (out, R) and layers W (out, in, R): (in, R)."""
    return sum(r[o] * W[o] for o in range(W.shape[0]))


def _matvec(W, c):
    """W c for layers W (out, in, R) and columns c (in, R): (out, R)."""
    return sum(W[:, i] * c[i] for i in range(W.shape[1]))


def _layer_rows(W, r):
    """(a_k, a_{k−1} = a_k W_k) for one layer W = W_k and r = a_k."""
    return r, _stored(_vecmat(r, W))


def _layer_columns(W, c):
    """(c_k, c_{k+1} = W_k c_k) for one layer W = W_k and c = c_k."""
    return c, _stored(_matvec(W, c))


def _block_rows(W, r):
    """For a block W (m, out, in, R) of layers k0+1..k0+m and r = a_{k0+m}: the rows a_k
    of its layers (m, out, R), and a_{k0} = r W_{k0+m} ⋯ W_{k0+1}."""
    if W.shape[0] == 1:  # a non-square layer is alone in its block
        return r[None], _vecmat(r, W[0])
    r_first, rows = jax.lax.scan(lambda r, w: (_vecmat(r, w), r), r, W, reverse=True)
    return rows, r_first


def _block_columns(W, c):
    """For a block W (m, out, in, R) of layers k0+1..k0+m and c = c_{k0+1}: the columns
    c_k of its layers (m, in, R), and W_{k0+m} ⋯ W_{k0+1} c."""
    if W.shape[0] == 1:
        return c[None], _matvec(W[0], c)
    c_last, cols = jax.lax.scan(lambda c, w: (_matvec(w, c), c), c, W)
    return cols, c_last
