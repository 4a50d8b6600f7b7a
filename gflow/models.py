"""Deep linear networks x ↦ pᵀ W_L ⋯ W_1 x as Equinox modules (theory.md §1), and MLPs
with GELU activations x ↦ W_L σ(W_{L−1} ⋯ σ(W_1 x)) (theory.md §10).

Layers of equal shape that follow each other are stored stacked in one array (a
"block"), so that products over depth run as a `lax.scan` and compile time does not grow
with L. A network is a tuple of blocks plus the fixed output vector `p`; `p` (and the
identity of a residual layer) is not a trainable leaf: see [`trainable`][]. An MLP's
`activation` is a static field: "linear" (the deep linear network) or a GELU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .files import atomic_path

ACTIVATIONS = {
    "linear": None,
    "gelu": partial(jax.nn.gelu, approximate=True),
    "gelu_exact": partial(jax.nn.gelu, approximate=False),
}
"""σ by name: none (the deep linear network), GELU in its tanh approximation (as the
authors' code), and GELU's exact erf form."""


class ShapeError(ValueError):
    """Layer widths or weights that do not make a network."""



class DeepLinear(eqx.Module):
    """A network x ↦ pᵀ W_L σ(W_{L−1} ⋯ σ(W_1 x)): deep linear (σ = identity) unless an MLP
    has an `activation`.

    Subclasses say how the stacked weights are stored (`weight_blocks`); everything
    else (end-to-end regressor, outputs, per-layer observables) is written once against that.
    """

    p: eqx.AbstractVar[Float[Array, " out"]]
    activation = "linear"  # a class default; the MLP makes it a static field

    @property
    def is_linear(self) -> bool:
        """Whether the network computes a linear map x ↦ ⟨w, x⟩ (no activation)."""
        return self.activation == "linear"

    def weight_blocks(self) -> tuple[Float[Array, "m out in"], ...]:
        """W_1, …, W_L grouped into stacks of equal-shaped consecutive layers."""
        raise NotImplementedError

    @property
    def depth(self) -> int:
        return sum(b.shape[0] for b in self.weight_blocks())

    @property
    def widths(self) -> tuple[int, ...]:
        """(d_0, d_1, …, d_L)."""
        blocks = self.weight_blocks()
        out = [blocks[0].shape[2]]
        for b in blocks:
            out += [b.shape[1]] * b.shape[0]
        return tuple(out)

    def parameter_blocks(self) -> tuple[Float[Array, "m out in"], ...]:
        """The trainable arrays in the layout of `weight_blocks` (an MLP's weights; a
        residual network's V_k): applied to a gradient tree, the blocks of ∂R/∂W_k."""
        raise NotImplementedError

    def layers(self) -> list[Float[Array, "out in"]]:
        """W_1, …, W_L as a list (unrolled; for checks and small models)."""
        return [w for b in self.weight_blocks() for w in b]


def host_layers(model: DeepLinear) -> list[np.ndarray]:
    """W_1, …, W_L as float64 NumPy arrays, each block copied from the device once (splitting a
    block on the device, as `DeepLinear.layers` does outside a trace, compiles a program per
    block shape)."""
    return [w for b in model.weight_blocks() for w in np.asarray(b, np.float64)]


class MLP(DeepLinear):
    """MLP with output width 1 and p = 1 (the small-scale setting): deep linear, or with σ
    after every layer but the last (`activation`, a name from `ACTIVATIONS`).

    `blocks` holds the trainable weights W_1..W_L; build it with [`mlp`][].
    """

    blocks: tuple[Float[Array, "m out in"], ...]
    p: Float[Array, " out"]
    activation: str = eqx.field(static=True, default="linear")

    def __check_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ShapeError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}.")

    def weight_blocks(self):
        return self.blocks

    def parameter_blocks(self):
        return self.blocks


class Residual(DeepLinear):
    """Residual linear network W_k = I + V_k (all d × d) with a fixed output vector p.

    Only `V` is trained; gradient flow on V is gradient flow on W from I + V(0).
    """

    V: Float[Array, "L d d"]
    p: Float[Array, " d"]

    def weight_blocks(self):
        return (self.V + jnp.eye(self.V.shape[-1]),)

    def parameter_blocks(self):
        return (self.V,)


def trainable(model: DeepLinear):
    """Filter spec of the trainable leaves: every array except `p`."""
    spec = jax.tree.map(eqx.is_inexact_array, model)
    return eqx.tree_at(lambda m: m.p, spec, replace=False)


def n_trainable(model: DeepLinear) -> int:
    """P, the number of trainable parameters."""
    return sum(int(x.size) for x in jax.tree.leaves(eqx.filter(model, trainable(model))))


def end_to_end(model: DeepLinear, unroll: bool = False) -> Float[Array, " d"]:
    """The regressor w = W_1ᵀ ⋯ W_Lᵀ p, by a chain of vector–matrix products."""
    return row_product(model, skip=0, unroll=unroll)


def row_product(model: DeepLinear, skip: int = 0, unroll: bool = False) -> Float[Array, " width"]:
    """The row vector pᵀ W_L ⋯ W_{skip+1} (skip = 0: the regressor; 1: pᵀ W_L ⋯ W_2).

    Layers of a block are multiplied in a `lax.scan`, so compile time does not grow with
    depth; `unroll=True` writes the loop out instead, ~25% faster inside GD's step scan
    for moderate depth, but it makes the flow's compile (Hessian products, Lanczos) slower.
    A network with an activation has no such product: `ValueError`.
    """
    if not model.is_linear:
        raise ValueError(
            f"a network with {model.activation} activations computes no linear map x ↦ ⟨w, x⟩: "
            "it has no end-to-end regressor or product of layers (theory.md §10)."
        )
    r = model.p
    blocks = model.weight_blocks()
    first = np.cumsum([0] + [b.shape[0] for b in blocks])[:-1]  # index of each block's W
    for b, k0 in zip(reversed(blocks), reversed(first)):
        part = b[max(0, skip - k0) :]
        if unroll or part.shape[0] == 1:  # a non-square layer is always alone in its block
            for i in reversed(range(part.shape[0])):
                r = part[i].T @ r
        elif part.shape[0] > 1:
            r, _ = jax.lax.scan(lambda r, w: (w.T @ r, None), r, part, reverse=True)
    return r


def outputs(model: DeepLinear, X: Float[Array, "n d"]) -> Float[Array, " n"]:
    """The network's outputs f(x_i) on the rows x_i of X.

    A linear network gives X w with w its regressor; otherwise each layer maps the hidden
    rows h ↦ σ(h W_kᵀ), the last without σ, then p. Layers of a block run in a `lax.scan`.
    """
    if model.is_linear:
        return X @ end_to_end(model)
    act = ACTIVATIONS[model.activation]
    layer = lambda h, w: (act(h @ w.T), None)  # noqa: E731
    h, blocks = X, model.weight_blocks()
    for i, b in enumerate(blocks):
        hidden = b[:-1] if i == len(blocks) - 1 else b
        if hidden.shape[0] > 1:  # equal consecutive shapes: square layers
            h, _ = jax.lax.scan(layer, h, hidden)
        elif hidden.shape[0] == 1:
            h = layer(h, hidden[0])[0]
    return (h @ blocks[-1][-1].T) @ model.p


def _runs(shapes: Sequence[tuple[int, ...]]) -> list[slice]:
    """The runs of equal consecutive shapes, as slices: the layers of each block."""
    starts = [i for i in range(len(shapes)) if i == 0 or shapes[i] != shapes[i - 1]]
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], len(shapes)])]


def stack_layers(layers: Sequence[np.ndarray]) -> tuple[Array, ...]:
    """Stack consecutive equal-shaped layers (float64 NumPy arrays) into blocks, on the host
    (`jnp.stack` would compile a program per block shape), then put them on the device."""
    return tuple(jax.device_put(np.stack(layers[run])) for run in _runs([w.shape for w in layers]))


def check_input_width(model: DeepLinear, d: int) -> None:
    """Raise `ShapeError` unless `model` takes inputs of size `d` (the data's features)."""
    if model.widths[0] != d:
        raise ShapeError(f"the network takes inputs of size {model.widths[0]} but the data has d = {d}.")


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or any(w < 1 for w in widths):
        raise ShapeError(
            f"widths (d_0, …, d_L) need at least two entries, all ≥ 1; got {widths}."
        )
    return widths


def mlp_widths(d: int, depth: int, width: int | Sequence[int]) -> tuple[int, ...]:
    """(d, d_1, …, d_{L−1}, 1) from an input size, a depth and a hidden width or list."""
    if int(depth) < 1:
        raise ShapeError(f"depth must be ≥ 1; got {depth}.")
    if isinstance(width, int | np.integer):
        hidden = [int(width)] * (int(depth) - 1)
    else:
        hidden = [int(w) for w in width]
        if len(hidden) != depth - 1:
            raise ShapeError(
                f"a depth-{depth} MLP needs {depth - 1} hidden widths; got {len(hidden)}."
            )
    return _check_widths([d, *hidden, 1])


def mlp(key: PRNGKeyArray, widths: Sequence[int], scale: float, activation: str = "linear") -> MLP:
    """Small-scale initialization: W_k(0) has i.i.d. N(0, scale²) entries.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `widths`: (d_0, d_1, …, d_L) with d_L = 1.
    - `scale`: standard deviation of each entry (the paper's "scale").
    - `activation`: a name from `ACTIVATIONS` ("linear", "gelu", "gelu_exact").
    """
    widths = _check_widths(widths)
    if widths[-1] != 1:
        raise ShapeError(f"an MLP ends in width 1 (p = 1); got d_L = {widths[-1]}.")
    blocks = _small_scale_blocks(key, widths, _as_argument(scale))
    return MLP(blocks=blocks, p=jax.device_put(np.ones(1)), activation=activation)


def _as_argument(scale):
    """A scale as an argument of the drawing programs: a float64 scalar (a Python float would
    be a constant of the program, one program per value), or as it is when it is a JAX array
    (traced, e.g. under `vmap` over scales)."""
    return scale if isinstance(scale, jax.Array) else np.float64(scale)


@partial(jax.jit, static_argnums=1)
def _small_scale_blocks(key, widths: tuple[int, ...], scale):
    """The blocks of [`mlp`][] in one compiled program, where drawing layer by layer ran
    ~10 small ones (1 s of compiling in a first `gflow run`). Each block's layers are drawn
    by one `vmap` over their keys: the draws of `jax.random.normal` key by key, with one
    copy of its code per block shape. The barrier keeps XLA from fusing the product by
    `scale` into the draw, which moved weights by an ulp: the weights are those drawn one
    by one, bit for bit (tests/test_models.py)."""
    keys = jax.random.split(key, len(widths) - 1)
    shapes = list(zip(widths[1:], widths[:-1]))
    blocks = [jax.vmap(partial(jax.random.normal, shape=shapes[run.start], dtype=jnp.float64))(keys[run])
              for run in _runs(shapes)]
    return tuple(scale * b for b in jax.lax.optimization_barrier(blocks))


def residual(
    key: PRNGKeyArray, d: int, depth: int, s: float, p: Array | None = None, p_key: PRNGKeyArray | None = None
) -> Residual:
    """Residual initialization W_k(0) = I + (s/√(L d)) N_k (theory.md §5).

    `p` defaults to a random unit vector, as in the paper's code, drawn from `p_key`
    (default `key`): repetitions that share `p_key` share p, like they share the data.
    """
    if int(d) < 1 or int(depth) < 1:
        raise ShapeError(f"a residual network needs d ≥ 1 and depth ≥ 1; got d={d}, depth={depth}.")
    if p is not None:
        p = jnp.asarray(p, jnp.float64)
        if p.shape != (int(d),):
            raise ShapeError(f"p must have shape ({d},); got {p.shape}.")
    scale = _as_argument(s / np.sqrt(depth * d))
    V, drawn = _residual_draws(key, key if p_key is None else p_key, int(d), int(depth), scale)
    return Residual(V=V, p=drawn / jnp.linalg.norm(drawn) if p is None else p)


@partial(jax.jit, static_argnums=(2, 3))
def _residual_draws(key, p_key, d: int, depth: int, scale):
    """V(0) and the draw of a random p for [`residual`][], in one compiled program (see
    [`_small_scale_blocks`][]; p is normalized outside it, where its norm is the one
    computed before, bit for bit: fused here, it moved p by an ulp)."""
    V, p = jax.lax.optimization_barrier((jax.random.normal(jax.random.split(key)[1], (depth, d, d), jnp.float64),
                                         jax.random.normal(jax.random.split(p_key)[0], (d,), jnp.float64)))
    return scale * V, p


def from_layers(
    layers: Sequence[Array], p: Array | None = None, kind: str = "mlp", activation: str = "linear"
) -> DeepLinear:
    """A network with explicit weights W_1..W_L (and p for a residual network).

    For `kind="residual"` the given W_k are the full weights; V_k = W_k − I is stored. An
    MLP takes an `activation` (a residual network is linear).
    """
    layers = [np.asarray(w, np.float64) for w in layers]
    if not layers or any(w.ndim != 2 for w in layers):
        raise ShapeError("layers must be a non-empty list of 2-D arrays.")
    for k in range(1, len(layers)):
        if layers[k].shape[1] != layers[k - 1].shape[0]:
            raise ShapeError(
                f"W_{k + 1} has {layers[k].shape[1]} columns but W_{k} has "
                f"{layers[k - 1].shape[0]} rows; consecutive layers must chain."
            )
    for k, w in enumerate(layers):
        if not np.all(np.isfinite(w)):
            raise ShapeError(f"W_{k + 1} has NaN or infinite entries.")
    if kind == "mlp":
        if layers[-1].shape[0] != 1:
            raise ShapeError(f"an MLP's last layer has one row; W_L has shape {layers[-1].shape}.")
        return MLP(blocks=stack_layers(layers), p=jax.device_put(np.ones(1)), activation=activation)
    if activation != "linear":
        raise ShapeError(f"a {kind} network is linear; activation {activation!r} is for an mlp.")
    if kind == "residual":
        d = layers[0].shape[1]
        if any(w.shape != (d, d) for w in layers):
            raise ShapeError(f"a residual network's layers are all {d} × {d}.")
        if p is None:
            raise ShapeError("a residual network from explicit weights needs p.")
        p = np.asarray(p, np.float64).reshape(-1)
        if p.shape != (d,) or not np.all(np.isfinite(p)):
            raise ShapeError(f"p must be a finite vector of shape ({d},); got {p.shape}.")
        return Residual(V=jax.device_put(np.stack([w - np.eye(d) for w in layers])), p=jax.device_put(p))
    raise ShapeError(f"unknown network kind {kind!r} (use 'mlp' or 'residual').")


def load_layers(path: str | os.PathLike, kind: str = "mlp", activation: str = "linear") -> DeepLinear:
    """Load explicit weights from an .npz holding `W1`, `W2`, …, `WL` (and `p`); the
    file holds weights only, the `activation` is the caller's. Never unpickles.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ShapeError(f"weights file {path!r} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001
        raise ShapeError(f"cannot read {path!r} as .npz: {e}") from None
    names = sorted((k for k in arrays if k[:1] == "W" and k[1:].isdigit()), key=lambda k: int(k[1:]))
    if [int(k[1:]) for k in names] != list(range(1, len(names) + 1)):
        raise ShapeError(f"{path!r} must hold W1, W2, …, WL with no gaps; found {sorted(arrays)}.")
    try:
        return from_layers([arrays[k] for k in names], arrays.get("p"), kind, activation)
    except ShapeError as e:
        raise ShapeError(f"{path!r}: {e}") from None


def save_layers(model: DeepLinear, path: str | os.PathLike) -> None:
    """Write W1..WL and p to an .npz that [`load_layers`][] reads back (atomic)."""
    arrays = {f"W{k + 1}": w for k, w in enumerate(host_layers(model))}
    arrays["p"] = np.asarray(model.p)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
