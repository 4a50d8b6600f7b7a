"""Closed forms of theory.md §2–§5, from a problem and a network.

The sharpness bounds of §2, the critical step size of §3, the scale ε of §4 with the
corollary's bounds, the residual quantities of §5, and the sharpness of a network; plain
functions of numbers or models. [`bounds_from_attrs`][] gives the bounds from a
trajectory's `attrs` alone, for figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import compilation, observables as obs
from ..models import DeepLinear, end_to_end, from_layers, host_layers, trainable
from ..problem import Problem
from .tolerances import roundoff


def sharpness_constant(pi_star_norm: float, depth: int, p_norm: float = 1.0) -> float:
    """c = ‖π*‖^{2−2/L} ‖p‖^{2/L}, the scale of every sharpness bound (theory.md §2)."""
    L = int(depth)
    return float(pi_star_norm) ** (2.0 - 2.0 / L) * float(p_norm) ** (2.0 / L)


def bounds(
    problem: Problem | dict, depth: int, p_norm: float = 1.0
) -> dict[str, float]:
    """Closed-form bounds of theory.md §2–4 for a network of depth `depth`.

    **Arguments:**

    - `problem`: a [`Problem`][] or a dict with `a`, `lam`, `Lam`, `pi_star_norm`
      (e.g. a trajectory's `attrs`).
    - `depth`: L.
    - `p_norm`: ‖p‖ (1 for the MLP, and for the paper's random unit p).

    **Returns:** a dict with
    `c`; `S_lower` = 2cLa ≤ S_min ≤ `S_upper` = 2c√((2L−1)Λ² + (L−1)²a²) (also as
    `S_min_lower`, `S_min_upper`); `eta_crit` = 2/S_lower, above which GD cannot converge;
    `S_balanced`, the sharpness of the balanced rank-one minimizer aligned with π* (an
    upper bound on S_min), when Σ̂ is given or the dict holds it (a trajectory's `attrs`
    do: it needs the whole matrix); `S_corollary_upper` = 4(Λ/λ)·S_balanced, the
    small-scale corollary's ceiling (4(Λ/λ)·S_upper when S_balanced is unknown); `S_reference_8LLam` = 8cLΛ, the authors' plotted
    reference line; `sigma_low`, `sigma_high` = (‖π*‖/2)^{1/L}, (2‖π*‖)^{1/L}, the
    corollary's band for the layers' top singular values (MLP, p = 1).
    """
    k = problem_constants(problem)
    L = int(depth)
    a, lam, Lam, norm = k["a"], k["lam"], k["Lam"], k["pi_star_norm"]
    c = sharpness_constant(norm, L, p_norm)
    lower = 2.0 * c * L * a
    upper = 2.0 * c * math.sqrt((2 * L - 1) * Lam**2 + (L - 1) ** 2 * a**2)
    out = dict(
        c=c,
        S_lower=lower,
        S_upper=upper,
        S_min_lower=lower,
        S_min_upper=upper,
        eta_crit=2.0 / lower if lower > 0 else math.inf,
        S_reference_8LLam=8.0 * c * L * Lam,
        sigma_low=(norm / 2.0) ** (1.0 / L),
        sigma_high=(2.0 * norm) ** (1.0 / L),
    )
    if isinstance(problem, Problem):
        out["S_balanced"] = balanced_sharpness(problem, L, p_norm)
    elif math.isfinite(float(problem.get("S_balanced", math.nan))):
        out["S_balanced"] = float(problem["S_balanced"])
    ceiling = out.get("S_balanced", upper)
    out["S_corollary_upper"] = 4.0 * (Lam / lam) * ceiling if lam > 0 else math.inf
    return out


def bounds_from_attrs(attrs: dict, p_norm: float | None = None) -> dict[str, float]:
    """[`bounds`][] from a trajectory's `attrs` (problem constants, `depth`, and `p_norm`
    and `S_balanced`, which every Dataset gflow writes records).

    `p_norm` defaults to `attrs["p_norm"]` when present, else 1 (the MLP, and the paper's
    unit p); [`bounds_from_dataset`][] reads ‖p‖ from the Dataset itself: use it.
    """
    if p_norm is None:
        p_norm = float(attrs.get("p_norm", 1.0))
    return bounds(attrs, int(attrs["depth"]), p_norm)


def bounds_from_dataset(ds) -> dict[str, float]:
    """[`bounds`][] for a trajectory, with ‖p‖ read from its `p` variable: the one source
    of a trajectory's bounds for its checks, summary and figures."""
    p_norm = float(np.linalg.norm(ds["p"].values)) if "p" in ds else None
    return bounds_from_attrs(ds.attrs, p_norm)


def critical_step_size(problem: Problem | dict, depth: int, p_norm: float = 1.0) -> float:
    """η_crit = 2/S_lower = 1/(L a c): GD cannot converge to a minimizer above it (§3)."""
    return bounds(problem, depth, p_norm)["eta_crit"]


def balanced_sharpness(problem: Problem, depth: int, p_norm: float = 1.0) -> float:
    """S of the balanced rank-one minimizer aligned with π*, in closed form.

    With s = Σ̂^{1/2}u, u = π*/‖π*‖, its Hessian is 2c·Σ̂^{1/2}(I + (L−1)uuᵀ)Σ̂^{1/2} in
    the directions that move w, so S = 2c·λ_max(Σ̂ + (L−1)ssᵀ): between S_lower and S_upper.
    """
    sigma = np.asarray(problem.sigma)
    pi = np.asarray(problem.pi_star)
    u = pi / np.linalg.norm(pi)
    w, V = np.linalg.eigh(sigma)
    s = (V * np.sqrt(np.clip(w, 0, None))) @ V.T @ u
    c = sharpness_constant(np.linalg.norm(pi), depth, p_norm)
    return float(2 * c * np.linalg.eigvalsh(sigma + (depth - 1) * np.outer(s, s))[-1])


def balanced_minimizer(problem: Problem, widths: Sequence[int], p=None, key=None) -> DeepLinear:
    """A balanced rank-one global minimizer W_k = σ u_k u_{k−1}ᵀ with u_0 = π*/‖π*‖.

    `widths` = (d, d_1, …, d_L). With `p` (d_L = d) it is a residual network with u_L = p/‖p‖
    and σ^L‖p‖ = ‖π*‖; without, an MLP (d_L = 1, p = 1, σ^L = ‖π*‖). Hidden directions
    u_1..u_{L−1} are random unit vectors drawn from `key`. Its sharpness is
    [`balanced_sharpness`][]: the reference minimizer of theory.md §2.
    """
    widths = [int(w) for w in widths]
    L = len(widths) - 1
    pi = np.asarray(problem.pi_star)
    key = jax.random.key(0) if key is None else key
    keys = jax.random.split(key, L)
    us = [pi / np.linalg.norm(pi)]
    for k in range(1, L):
        v = np.asarray(jax.random.normal(keys[k], (widths[k],)))
        us.append(v / np.linalg.norm(v))
    if p is None:
        us.append(np.ones(1))
        sigma = np.linalg.norm(pi) ** (1.0 / L)
        return from_layers([sigma * np.outer(us[k + 1], us[k]) for k in range(L)])
    p = np.asarray(p, np.float64)
    us.append(p / np.linalg.norm(p))
    sigma = (np.linalg.norm(pi) / np.linalg.norm(p)) ** (1.0 / L)
    return from_layers([sigma * np.outer(us[k + 1], us[k]) for k in range(L)], p, "residual")


def norm_sharpness_bound(layers: Sequence, problem: Problem | dict) -> float:
    """2a‖π*‖² Σ_k ‖W_k‖_F^{−2}, a lower bound on S at any global minimizer W.

    Derived here: along the direction (t_k W_k/‖W_k‖_F)_k the end-to-end regressor moves by
    π* Σ_k t_k/‖W_k‖_F (it is linear in each W_k), and the Hessian at a minimizer is
    2JᵀΣ̂J; maximizing over unit t gives the bound. It equals S_lower at the balanced
    minimizer and grows like C² for (C W_1, W_2/C, …). The slides' form (theory.md §2,
    exponents unverified) is [`slides_norm_sharpness_bound`][].
    """
    k = problem_constants(problem)
    inv = sum(1.0 / float(np.sum(np.asarray(w) ** 2)) for w in layers)
    return 2.0 * k["a"] * k["pi_star_norm"] ** 2 * inv


def slides_norm_sharpness_bound(layers: Sequence, problem: Problem | dict, p_norm: float = 1.0) -> float:
    """2a‖π*‖^{2−1/L}‖p‖^{1/L} Σ_k 1/‖W_k‖_F, as stated in theory.md §2 (from the slides,
    exponents not verified against the paper): reported, never used for a verdict."""
    k = problem_constants(problem)
    L = len(layers)
    inv = sum(1.0 / float(np.linalg.norm(np.asarray(w))) for w in layers)
    return 2.0 * k["a"] * k["pi_star_norm"] ** (2.0 - 1.0 / L) * p_norm ** (1.0 / L) * inv


def epsilon(model: DeepLinear | Sequence) -> float:
    """Scale of an initialization (theory.md §4):

        ε = 3 max_k ‖W_k‖_F² + 2 Σ_{k=1}^{L−1} ‖W_k W_kᵀ − W_{k+1}ᵀ W_{k+1}‖_2.
    """
    Ws = layer_arrays(model)
    top = max(float(np.sum(w**2)) for w in Ws)
    gaps = sum(float(np.linalg.norm(Ws[k] @ Ws[k].T - Ws[k + 1].T @ Ws[k + 1], 2)) for k in range(len(Ws) - 1))
    return 3.0 * top + 2.0 * gaps


def smallness(eps: float, depth: int) -> float:
    """32 L √ε: the corollary of §4 needs it ≤ 1."""
    return 32.0 * int(depth) * math.sqrt(eps)


def corollary_scale(unit_model: DeepLinear, target: float = 0.95) -> float:
    """The scale s such that s·W (W = `unit_model`, e.g. `models.mlp(key, widths, 1.0)`)
    has 32L√ε = `target`: ε is quadratic in s, so s = target / (32 L √ε(W))."""
    return target / smallness(epsilon(unit_model), unit_model.depth)


@compilation.exported
@eqx.filter_jit
def _regressor_and_grad_norm_sq(model: DeepLinear, problem: Problem):
    """(w = end-to-end regressor, ‖∇R‖²) at `model`: one compiled call, reused by every solve
    of the same shapes (run eagerly, the layer scans would compile anew at each call)."""
    return end_to_end(model), obs.grad_norm_sq(model, problem)


def assumption_a2(model: DeepLinear, problem: Problem) -> tuple[bool, dict]:
    """(A2): R(W(0)) ≤ ‖y‖²/n and ∇R(W(0)) ≠ 0. Returns (holds, the numbers).

    R(W(0)) − ‖y‖²/n = w₀ᵀΣ̂w₀ − 2w₀ᵀΣ̂π* is formed without cancellation: for a tiny
    init it is ~1e-14 and its sign is a coin flip (flipping the sign of W_1 flips it).
    `risk_minus_y_sq_error` bounds its round-off: a value within it has no decidable sign,
    and (A2) is then reported as not holding.
    """
    w0, grad0 = _regressor_and_grad_norm_sq(model, problem)
    w0, grad0 = np.asarray(w0), float(grad0)
    S, pi = np.asarray(problem.sigma), np.asarray(problem.pi_star)
    quad, cross = float(w0 @ S @ w0), float(w0 @ S @ pi)
    diff = quad - 2 * cross
    error = float(roundoff(abs(quad) + 2 * abs(cross)))
    numbers = dict(risk_minus_y_sq=diff, risk_minus_y_sq_error=error, grad_norm_sq_initial=grad0)
    return diff < -error and grad0 > 0, numbers


def initial_constants(model: DeepLinear, problem: Problem) -> dict[str, float]:
    """What a trajectory records of its problem and initialization, so that its checks,
    summary and figures need neither the data nor the network again: ‖p‖, S_balanced, and
    (A2)'s numbers at t = 0 (see [`assumption_a2`][]); ‖p‖ alone for a network with an
    activation (the others are statements about linear networks)."""
    p_norm = float(np.linalg.norm(np.asarray(model.p)))
    if not model.is_linear:
        return dict(p_norm=p_norm)
    _, a2 = assumption_a2(model, problem)
    return dict(p_norm=p_norm, S_balanced=balanced_sharpness(problem, model.depth, p_norm),
                **{f"a2_{k}": v for k, v in a2.items()})


def corollary_bounds(model: DeepLinear | Sequence, problem: Problem | dict) -> dict[str, float]:
    """The small-scale corollary's bounds (theory.md §4) for an initialization.

    Keys: `epsilon`, `smallness` (32L√ε), `applies` (32L√ε ≤ 1); `rank_one_gap_max` = ε;
    `sigma_low`, `sigma_high`; `alignment_min` = 1 − ε/(2‖π*‖)^{2/L} as stated (slides;
    "check the paper"); `alignment_min_from_lemma` = 1 − ε/(‖π*‖/2)^{2/L}, what the
    Lemma's invariant (iii) and the low-norm band give; `S_lower`, `S_upper`,
    `S_corollary_upper`.
    """
    Ws = layer_arrays(model)
    L = len(Ws)
    eps = epsilon(Ws)
    b = bounds(problem, L)
    norm = problem_constants(problem)["pi_star_norm"]
    return dict(
        epsilon=eps,
        smallness=smallness(eps, L),
        applies=smallness(eps, L) <= 1.0,
        rank_one_gap_max=eps,
        sigma_low=b["sigma_low"],
        sigma_high=b["sigma_high"],
        alignment_min=1.0 - eps / (2.0 * norm) ** (2.0 / L),
        alignment_min_from_lemma=1.0 - eps / (norm / 2.0) ** (2.0 / L),
        S_lower=b["S_lower"],
        S_upper=b["S_upper"],
        S_corollary_upper=b["S_corollary_upper"],
    )


def residual_theta(initial: DeepLinear, final: DeepLinear) -> np.ndarray:
    """‖θ_k‖_F with θ_k = L (W_k(∞) − W_k(0)), one per layer (theory.md §5)."""
    A, B = layer_arrays(initial), layer_arrays(final)
    L = len(A)
    return np.array([L * float(np.linalg.norm(b - a)) for a, b in zip(A, B)])


def residual_scale(model: DeepLinear) -> float:
    """Estimate of s from V(0) = (s/√(Ld)) N: s² ≈ Σ_k ‖V_k(0)‖_F² / d."""
    Ws = layer_arrays(model)
    d = Ws[0].shape[1]
    return math.sqrt(sum(float(np.sum((w - np.eye(d)) ** 2)) for w in Ws) / d)


def partial_product_extremes(model: DeepLinear | Sequence) -> np.ndarray:
    """(σ_max, σ_min) of each partial product P_k = W_k ⋯ W_1, shape (L, 2) (numpy)."""
    out, P = [], None
    for w in layer_arrays(model):
        P = w if P is None else w @ P
        s = np.linalg.svd(P, compute_uv=False)
        out.append((s[0], s[-1]))
    return np.array(out)


def partial_product_bounds(s: float, d: int, u: float | None = None, failure: float = 0.01) -> dict[str, float]:
    """The simplified lemma on products of perturbed matrices (theory.md §5, slides).

    With probability ≥ 1 − 8 exp(−d u²/(32 s²)), for all θ with max_k ‖θ_k‖_2 ≤
    exp(−2s² − 4u)/64, every partial product P_k has ‖P_k‖_2 ≤ 4 exp(s²/2 + u) and
    σ_min(P_k) ≥ exp(−2s² − u)/4 (the slides print −2s²/d − u, which Monte Carlo refutes:
    theory.md §8). Without `u`, the smallest u whose failure probability is `failure` is
    used.
    """
    if u is None:
        u = math.sqrt(32.0 * s**2 * math.log(8.0 / failure) / d) if s > 0 else 0.0
    return dict(
        u=u,
        probability=1.0 - 8.0 * math.exp(-d * u**2 / (32.0 * s**2)) if s > 0 else 1.0,
        theta_radius=math.exp(-2.0 * s**2 - 4.0 * u) / 64.0,
        upper=4.0 * math.exp(s**2 / 2.0 + u),
        lower=math.exp(-2.0 * s**2 - u) / 4.0,
    )


def problem_constants(problem: Problem | dict) -> dict[str, float]:
    """`a`, `lam`, `Lam`, `pi_star_norm` of a [`Problem`][] or of a dict such as `attrs`."""
    if isinstance(problem, Problem):
        return problem.constants()
    return {k: float(problem[k]) for k in ("a", "lam", "Lam", "pi_star_norm")}


def layer_arrays(model: DeepLinear | Sequence) -> list[np.ndarray]:
    """W_1..W_L as float64 numpy arrays, from a network or a list of matrices."""
    if isinstance(model, DeepLinear):
        return host_layers(model)
    return [np.asarray(w, np.float64) for w in model]


def trainable_arrays(model: DeepLinear) -> list[np.ndarray]:
    """The trainable leaves of `model` (what GF moves) as numpy arrays."""
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(model, trainable(model)))]
