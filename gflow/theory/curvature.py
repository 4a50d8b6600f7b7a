"""The Hessian of R at one network: its extreme eigenvalues, and its split at a minimizer.

The risk is a quadratic ℓ of "features" F(W): R = ℓ(F(W)) with ∇²ℓ = 2M ([`risk_features`][]).
For a linear network F is the end-to-end regressor w and M = Σ̂; for one with an activation
F = f(X), the outputs on the training set, and M = I/n. With g = ∇ℓ(F) the Hessian is exactly

    ∇²R(W) = 2JᵀMJ + B,    J = ∂F/∂W,   B = ∇²_W⟨g, F(W)⟩   (g held fixed),

so where g = 0 (a global minimizer of a linear network; a point that fits the data) it is
2JᵀMJ: positive semidefinite, with the same nonzero eigenvalues as the small matrix
2M^{1/2}JJᵀM^{1/2} (theory.md §8, §10). [`final_curvature`][] computes the three pieces
independently, so that the checks can compare them.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import compilation, linalg
from .. import observables as obs
from ..models import DeepLinear, end_to_end, n_trainable, outputs, trainable
from ..problem import Problem

DENSE_UP_TO = 400
"""Networks with at most this many trainable parameters get dense Hessians (exact
eigenvalues, P Hessian-vector products); larger ones Lanczos with `LANCZOS_STEPS` steps."""

LANCZOS_STEPS = 80

LANCZOS_NORM_SAFETY = 1.5
"""Lanczos Ritz values lie inside the spectrum, so ‖B‖ from Lanczos is a lower estimate;
it is inflated by this factor where a tolerance needs an upper bound."""


class Curvature(NamedTuple):
    """The Hessian of R at one network.

    - `sharpness`, `min_eigenvalue`: largest and smallest eigenvalue of ∇²R.
    - `gauss_newton_top`: largest eigenvalue of 2JᵀMJ (through the small form).
    - `residual_norm`: ‖B‖_2 (an upper estimate when `dense` is False).
    - `hessian_norm`: max |eigenvalue| of ∇²R, the scale of its round-off.
    - `n_params`, `dense`: P, and whether the eigenvalues are exact (dense) or Lanczos.
    """

    sharpness: float
    min_eigenvalue: float
    gauss_newton_top: float
    residual_norm: float
    hessian_norm: float
    n_params: int
    dense: bool


def sharpness(model: DeepLinear, problem: Problem, dense_up_to: int = DENSE_UP_TO) -> float:
    """S(W): dense Hessian and `eigvalsh` up to `dense_up_to` parameters (exact), else
    Lanczos with 80 steps (a Ritz value, never above S)."""
    return float(_extremes(model, problem, n_trainable(model) <= dense_up_to)[1])


def final_curvature(model: DeepLinear, problem: Problem, dense_up_to: int = DENSE_UP_TO) -> Curvature:
    """∇²R at `model`: its extreme eigenvalues, 2JᵀMJ's top eigenvalue and ‖B‖_2, each
    computed on its own (B by differentiating ⟨g, F(W)⟩ twice, not as a difference)."""
    P = n_trainable(model)
    dense = P <= dense_up_to
    lo, hi = (float(v) for v in _extremes(model, problem, dense))
    b_lo, b_hi = (float(v) for v in _residual_extremes(model, problem, dense))
    b_norm = max(abs(b_lo), abs(b_hi)) * (1.0 if dense else LANCZOS_NORM_SAFETY)
    return Curvature(hi, lo, _gauss_newton_top(model, problem), b_norm, max(abs(lo), abs(hi)), P, dense)


def risk_features(model: DeepLinear, problem: Problem):
    """(F, ℓ, M) with R(W) = ℓ(F(W)) and ∇²ℓ = 2M: (w, R_min + (w − π*)ᵀΣ̂(w − π*), Σ̂) for a
    linear network, (f(X), (1/n)‖y − f‖², I/n) for one with an activation."""
    if model.is_linear:
        return end_to_end, problem.risk, problem.sigma
    return (lambda m: outputs(m, problem.X)), (lambda f: jnp.mean((problem.y - f) ** 2)), jnp.eye(problem.n) / problem.n


def _flat(model: DeepLinear):
    """(flat trainable parameters, x ↦ the network with those parameters)."""
    params, static = eqx.partition(model, trainable(model))
    flat, unravel = ravel_pytree(params)
    return flat, lambda x: eqx.combine(unravel(x), static)


def _ends(f, x, dense: bool):
    if dense:
        eig = linalg.eigvalsh(linalg.dense_hessian(f, x))
    else:
        _, lin = jax.linearize(jax.grad(f), x)
        eig = linalg.lanczos_ritz_values(lin, x.shape[0], LANCZOS_STEPS)
    return eig[0], eig[-1]


@compilation.exported
@eqx.filter_jit
def _extremes(model, problem, dense: bool):
    """(smallest, largest) eigenvalue of ∇²R."""
    f, x = obs.flat_risk(model, problem)
    return _ends(f, x, dense)


@compilation.exported
@eqx.filter_jit
def _residual_extremes(model, problem, dense: bool):
    """(smallest, largest) eigenvalue of B = ∇²⟨g, F(W)⟩ with g = ∇ℓ(F) fixed."""
    x, network = _flat(model)
    features, loss, _ = risk_features(model, problem)
    g = jax.lax.stop_gradient(jax.grad(loss)(features(model)))
    return _ends(lambda z: g @ features(network(z)), x, dense)


@compilation.exported
@eqx.filter_jit
def _jacobian(model, problem):
    x, network = _flat(model)
    features = risk_features(model, problem)[0]
    return jax.jacfwd(lambda z: features(network(z)))(x)


def _gauss_newton_top(model: DeepLinear, problem: Problem) -> float:
    """λ_max(2JᵀMJ) = λ_max(2M^{1/2}JJᵀM^{1/2}): a d × d (or n × n) problem whatever P is."""
    J = np.asarray(_jacobian(model, problem))
    eig, V = np.linalg.eigh(np.asarray(risk_features(model, problem)[2]))
    root = (V * np.sqrt(np.clip(eig, 0.0, None))) @ V.T
    M = root @ (J @ J.T) @ root
    return float(2.0 * np.linalg.eigvalsh((M + M.T) / 2)[-1])
