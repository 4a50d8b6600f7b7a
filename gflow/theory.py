"""The theorems of theory.md as closed forms, and a run held against them.

Two halves:

- closed forms from a problem and an initialization (the sharpness bounds of §2, the
  critical step size of §3, the scale ε of §4 with the corollary's bounds, the residual
  quantities of §5), as plain functions of numbers or models; [`bounds_from_attrs`][]
  gives them from a trajectory's `attrs` alone, for figures;
- [`check`][], which holds a trajectory (an `xarray.Dataset` from `gflow.solve`, or a
  gradient-descent Dataset) against every statement that applies, and returns one
  [`Check`][] per statement with the observed value, the bound, the margin and a verdict.

Margins are the room left before a check fails, in the units of the quantity, the
numerical tolerance included: negative exactly when a statement is violated. Each check
carries the tolerance it allows and says where it comes from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import linalg
from .files import atomic_path
from . import observables as obs
from .models import DeepLinear, MLP, Residual, end_to_end, from_layers, trainable
from .problem import Problem

VERDICTS = ("holds", "violated", "assumption not met", "trend only")

SAFETY = 10.0
"""Factor between the controller's accepted local error and what a check allows.

An embedded error estimate can underestimate the true local error by a modest factor;
ten covers it without hiding a real violation (those are orders of magnitude larger).
"""

_EPS64 = float(np.finfo(np.float64).eps)
_RESOLVED = 1.5


# --- closed forms ----------------------------------------------------------------------


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
    `S_balanced`, the sharpness of the balanced rank-one minimizer aligned with π*, only
    when Σ̂ is given (it needs the whole matrix); `S_corollary_upper` = 4(Λ/λ)S_upper,
    the small-scale corollary's ceiling; `S_reference_8LLam` = 8cLΛ, the authors' plotted
    reference line; `sigma_low`, `sigma_high` = (‖π*‖/2)^{1/L}, (2‖π*‖)^{1/L}, the
    corollary's band for the layers' top singular values (MLP, p = 1).
    """
    k = _constants(problem)
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
        S_corollary_upper=4.0 * (Lam / lam) * upper if lam > 0 else math.inf,
        S_reference_8LLam=8.0 * c * L * Lam,
        sigma_low=(norm / 2.0) ** (1.0 / L),
        sigma_high=(2.0 * norm) ** (1.0 / L),
    )
    if isinstance(problem, Problem):
        out["S_balanced"] = balanced_sharpness(problem, L, p_norm)
    return out


def bounds_from_attrs(attrs: dict, p_norm: float | None = None) -> dict[str, float]:
    """[`bounds`][] from a trajectory's `attrs` (problem constants and `depth`).

    `p_norm` defaults to `attrs["p_norm"]` when present, else 1 (the MLP, and the paper's
    unit p); use [`bounds_from_dataset`][] to read ‖p‖ from the Dataset itself.
    """
    if p_norm is None:
        p_norm = float(attrs.get("p_norm", 1.0))
    return bounds(attrs, int(attrs["depth"]), p_norm)


def bounds_from_dataset(ds) -> dict[str, float]:
    """[`bounds`][] for a trajectory, with ‖p‖ read from its `p` variable."""
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
    k = _constants(problem)
    inv = sum(1.0 / float(np.sum(np.asarray(w) ** 2)) for w in layers)
    return 2.0 * k["a"] * k["pi_star_norm"] ** 2 * inv


def slides_norm_sharpness_bound(layers: Sequence, problem: Problem | dict, p_norm: float = 1.0) -> float:
    """2a‖π*‖^{2−1/L}‖p‖^{1/L} Σ_k 1/‖W_k‖_F, as stated in theory.md §2 (from the slides,
    exponents not verified against the paper): reported, never used for a verdict."""
    k = _constants(problem)
    L = len(layers)
    inv = sum(1.0 / float(np.linalg.norm(np.asarray(w))) for w in layers)
    return 2.0 * k["a"] * k["pi_star_norm"] ** (2.0 - 1.0 / L) * p_norm ** (1.0 / L) * inv


def epsilon(model: DeepLinear | Sequence) -> float:
    """Scale of an initialization (theory.md §4):

        ε = 3 max_k ‖W_k‖_F² + 2 Σ_{k=1}^{L−1} ‖W_k W_kᵀ − W_{k+1}ᵀ W_{k+1}‖_2.
    """
    Ws = _layers(model)
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


def assumption_a2(model: DeepLinear, problem: Problem) -> tuple[bool, dict]:
    """(A2): R(W(0)) ≤ ‖y‖²/n and ∇R(W(0)) ≠ 0. Returns (holds, the numbers).

    R(W(0)) − ‖y‖²/n = w₀ᵀΣ̂w₀ − 2w₀ᵀΣ̂π* is formed without cancellation: for a tiny
    init it is ~1e-14 and its sign is a coin flip (flipping the sign of W_1 flips it).
    """
    w0 = np.asarray(end_to_end(model))
    S, pi = np.asarray(problem.sigma), np.asarray(problem.pi_star)
    diff = float(w0 @ S @ w0 - 2 * w0 @ S @ pi)
    grad0 = float(obs.grad_norm_sq(model, problem))
    return diff <= 0 and grad0 > 0, dict(risk_minus_y_sq=diff, grad_norm_sq_initial=grad0)


def corollary_bounds(model: DeepLinear | Sequence, problem: Problem | dict) -> dict[str, float]:
    """The small-scale corollary's bounds (theory.md §4) for an initialization.

    Keys: `epsilon`, `smallness` (32L√ε), `applies` (32L√ε ≤ 1); `rank_one_gap_max` = ε;
    `sigma_low`, `sigma_high`; `alignment_min` = 1 − ε/(2‖π*‖)^{2/L} as stated (slides;
    "check the paper"); `alignment_min_from_lemma` = 1 − ε/(‖π*‖/2)^{2/L}, what the
    Lemma's invariant (iii) and the low-norm band give; `S_lower`, `S_upper`,
    `S_corollary_upper`.
    """
    Ws = _layers(model)
    L = len(Ws)
    eps = epsilon(Ws)
    b = bounds(problem, L)
    norm = _constants(problem)["pi_star_norm"]
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
    A, B = _layers(initial), _layers(final)
    L = len(A)
    return np.array([L * float(np.linalg.norm(b - a)) for a, b in zip(A, B)])


def residual_scale(model: DeepLinear) -> float:
    """Estimate of s from V(0) = (s/√(Ld)) N: s² ≈ Σ_k ‖V_k(0)‖_F² / d."""
    Ws = _layers(model)
    d = Ws[0].shape[1]
    return math.sqrt(sum(float(np.sum((w - np.eye(d)) ** 2)) for w in Ws) / d)


def partial_product_extremes(model: DeepLinear | Sequence) -> np.ndarray:
    """(σ_max, σ_min) of each partial product P_k = W_k ⋯ W_1, shape (L, 2) (numpy)."""
    out, P = [], None
    for w in _layers(model):
        P = w if P is None else w @ P
        s = np.linalg.svd(P, compute_uv=False)
        out.append((s[0], s[-1]))
    return np.array(out)


def partial_product_bounds(s: float, d: int, u: float | None = None, failure: float = 0.01) -> dict[str, float]:
    """The simplified lemma on products of perturbed matrices (theory.md §5, slides).

    With probability ≥ 1 − 8 exp(−d u²/(32 s²)), for all θ with max_k ‖θ_k‖_2 ≤
    exp(−2s² − 4u)/64, every partial product P_k has ‖P_k‖_2 ≤ 4 exp(s²/2 + u) and
    σ_min(P_k) ≥ exp(−2s²/d − u)/4 (exponents as stated, unverified). Without `u`, the
    smallest u whose failure probability is `failure` is used.
    """
    if u is None:
        u = math.sqrt(32.0 * s**2 * math.log(8.0 / failure) / d) if s > 0 else 0.0
    return dict(
        u=u,
        probability=1.0 - 8.0 * math.exp(-d * u**2 / (32.0 * s**2)) if s > 0 else 1.0,
        theta_radius=math.exp(-2.0 * s**2 - 4.0 * u) / 64.0,
        upper=4.0 * math.exp(s**2 / 2.0 + u),
        lower=math.exp(-2.0 * s**2 / d - u) / 4.0,
    )


def sharpness(model: DeepLinear, problem: Problem, dense_up_to: int = 400) -> float:
    """S(W): dense Hessian and `eigvalsh` up to `dense_up_to` parameters (exact), else
    Lanczos with 80 steps (a Ritz value, never above S; it matches the dense value to
    1e-8 in tests/test_linalg.py). The dense Hessian costs P Hessian-vector products."""
    n_params = sum(int(np.size(w)) for w in _trainable(model))
    return float(_top_eigenvalue(model, problem, n_params <= dense_up_to))


@eqx.filter_jit
def _top_eigenvalue(model, problem, dense: bool):
    f, x = obs.flat_risk(model, problem)
    if dense:
        return jnp.linalg.eigvalsh(linalg.dense_hessian(f, x))[-1]
    return linalg.top_hessian_eigenvalue(f, x, steps=80)


# --- tolerances --------------------------------------------------------------------------


def local_error_bound(attrs: dict, n_params: int, entry_max: float) -> float:
    """δ = √P (atol + rtol·M): a bound on ‖local error‖_2 of one accepted step.

    Diffrax's PID controller accepts a step when the RMS over all P parameters of
    error_i / (atol + rtol·|y_i|) is ≤ 1; with every |y_i| ≤ M the Euclidean norm of the
    error is then at most √P (atol + rtol·M).
    """
    rtol, atol = float(attrs["flow_rtol"]), float(attrs["flow_atol"])
    return math.sqrt(n_params) * (atol + rtol * entry_max)


def conservation_tolerance(attrs: dict, n_params: int, entry_max: float, weight_max: float) -> float:
    """Allowed drift of D_k = W_{k+1}ᵀW_{k+1} − W_kW_kᵀ after a solve.

    D_k is conserved by the exact flow from *any* point, so a numerical solution's D_k
    moves only at the jumps the local errors make, and those add up without being
    amplified. A jump δW moves D_k by at most 2‖W‖δ + δ² in Frobenius norm. Over N
    accepted steps: N (2‖W‖_max δ + δ²), times [`SAFETY`][], plus round-off N·ε_mach‖W‖².
    """
    N = _steps(attrs)
    delta = local_error_bound(attrs, n_params, entry_max)
    return SAFETY * N * (2.0 * weight_max * delta + delta**2) + 10.0 * N * _EPS64 * weight_max**2


# --- checks ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Check:
    """One statement held against one trajectory.

    **Fields:**

    - `name`: short identifier, e.g. "conservation".
    - `statement`: the statement in words, with its bound.
    - `source`: where it comes from ("Lemma (small-scale invariants), theory.md §4").
    - `verdict`: one of `VERDICTS`.
    - `observed`: the worst observed value (None when it could not be computed).
    - `bound`: the bound it is held to at that point.
    - `margin`: room left before the check fails, in the quantity's units: bound −
      observed + tolerance for an upper bound, observed − bound + tolerance for a lower
      one. Negative exactly when the verdict is "violated" (assumptions holding).
    - `time`: the time where the observed value is worst.
    - `tolerance`: the numerical slack allowed beyond the bound (solver error, round-off),
      included in `margin`; `note` says how it was derived.
    - `note`: how the tolerance was derived, assumptions that failed, caveats.
    """

    name: str
    statement: str
    source: str
    verdict: str
    observed: float | None = None
    bound: float | None = None
    margin: float | None = None
    time: float | None = None
    tolerance: float = 0.0
    note: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}; got {self.verdict!r}.")

    def to_dict(self) -> dict:
        return {k: _plain(v) for k, v in dataclasses.asdict(self).items()}


def _judge(name, statement, source, observed, bound, *, upper, time=None, tolerance=0.0,
           assumptions=True, note="") -> Check:
    """A Check for `observed ≤ bound` (upper=True) or `observed ≥ bound`."""
    observed, bound, tolerance = float(observed), float(bound), float(tolerance)
    margin = (bound - observed if upper else observed - bound) + tolerance
    if not assumptions:
        verdict = "assumption not met"
    elif np.isnan(margin):
        verdict = "violated"
    else:
        verdict = "holds" if margin >= 0 else "violated"
    return Check(name, statement, source, verdict, observed, bound, margin, time, float(tolerance), note)


def _missing(name, statement, source, what) -> Check:
    return Check(name, statement, source, "assumption not met", note=f"not recorded: {what}")


def check(trajectory, problem: Problem | None = None) -> list[Check]:
    """Hold a trajectory against every statement of theory.md that applies to it.

    **Arguments:**

    - `trajectory`: an `xarray.Dataset` from `gflow.solve` (method "gradient_flow") or
      from gradient descent (method "gradient_descent").
    - `problem`: the data, when at hand; checks that need Σ̂ or y (the final sharpness
      recomputed densely from the stored weights, (A2) without a recorded risk) use it,
      others read the problem's constants from `attrs`.

    **Returns:** a list of [`Check`][], in a stable order.
    """
    ds = trajectory
    if ds.attrs.get("method") == "gradient_descent":
        return _check_descent(ds, problem)
    return _check_flow(ds, problem)


def _check_flow(ds, problem):
    from .trajectory import model_from

    attrs = ds.attrs
    initial, final = model_from(ds, "initial"), model_from(ds, "final")
    L = initial.depth
    p_norm = float(np.linalg.norm(np.asarray(initial.p)))
    b = bounds(attrs, L, p_norm)
    times = ds.time.values
    n_params = sum(int(np.size(w)) for w in _trainable(initial))
    entry_max = max(_entry_max(initial), _entry_max(final))
    weight_max = max(_weight_max(initial), _weight_max(final))
    if "weight_norms" in ds:
        weight_max = max(weight_max, float(np.nanmax(ds.weight_norms.values)))
    has_steps = "flow_rtol" in attrs and "flow_atol" in attrs and ("num_accepted_steps" in attrs or "num_steps" in attrs)
    cons_tol = conservation_tolerance(attrs, n_params, entry_max, weight_max) if has_steps else math.inf
    delta = local_error_bound(attrs, n_params, entry_max) if has_steps else 0.0
    N = _steps(attrs) if has_steps else 0
    tol_note = (
        f"tolerance {SAFETY:g}·N(2‖W‖δ+δ²) with N={N} accepted steps, δ=√P(atol+rtol·M)="
        f"{delta:.3g} (P={n_params}), ‖W‖≤{weight_max:.3g}"
    )
    status = str(attrs.get("status", "unknown"))
    converged = status == "converged"
    out: list[Check] = []

    # 1. conservation law, along the trajectory and at the stored end point
    src = "conservation law of GF, theory.md §4 (exact along GF, any init)"
    stmt = "‖D_k(t) − D_k(0)‖_F = 0 for D_k = W_{k+1}ᵀW_{k+1} − W_kW_kᵀ, up to the solver's accepted local errors"
    if L < 2:
        pass
    elif "balance_drift" in ds:
        v = ds.balance_drift.values
        i, k = _argmax2(v)
        out.append(_judge("conservation", stmt, src, v[i, k], 0.0, upper=True, time=times[i],
                          tolerance=cons_tol, assumptions=has_steps,
                          note=f"worst at interface {k + 1}; " + tol_note if has_steps else "solver settings missing from attrs"))
    else:
        out.append(_missing("conservation", stmt, src, "balance_drift"))
    if L >= 2:
        drift_end = np.asarray(obs.balance_drift(final, problem, initial))
        out.append(_judge("conservation_final_weights", stmt + " (recomputed from the stored initial and final weights)",
                          src, drift_end.max(), 0.0, upper=True, time=float(attrs.get("t_final", times[-1])),
                          tolerance=cons_tol, assumptions=has_steps,
                          note=f"worst at interface {int(drift_end.argmax()) + 1}; " + tol_note if has_steps else "solver settings missing"))

    # 2. stored final weights reproduce the recorded end point
    out.append(_final_consistency(ds, final, problem))

    # 3. risk is non-increasing
    excess = ds.excess_risk.values if "excess_risk" in ds else None
    g = ds.grad_norm_sq.values if "grad_norm_sq" in ds else None
    src = "energy identity dR/dt = −‖∇R‖², theory.md §6 (classical)"
    stmt = "R(t) is non-increasing: R(t_{i+1}) − R(t_i) ≤ 0 between saves"
    series = excess if excess is not None else (ds.risk.values if "risk" in ds else None)
    if series is None:
        out.append(_missing("monotone_risk", stmt, src, "risk or excess_risk"))
    else:
        rise = np.diff(series)
        G = math.sqrt(float(np.nanmax(g))) if g is not None else math.sqrt(2 * b["S_upper"] * max(float(series[0]), 1.0))
        roundoff = 8 * _EPS64 * (np.abs(series[1:]) + (float(attrs.get("R_min", 0.0)) if excess is None else 0.0))
        tol = SAFETY * N * G * delta + roundoff
        j = int(np.argmax(rise - tol))
        out.append(_judge("monotone_risk", stmt, src, rise[j], 0.0, upper=True, time=times[j + 1], tolerance=tol[j],
                          assumptions=has_steps,
                          note=f"tolerance {SAFETY:g}·N·max‖∇R‖·δ + round-off: a local error e moves R by ≤ ‖∇R‖‖e‖"
                          + ("; increments of the cancellation-free excess risk" if excess is not None else "")))

    # 4. energy identity, bracketed between saves
    out.append(_energy(ds, series, g, times, N, delta, has_steps))

    # 5. pointwise PL lower bound
    out.append(_pl_pointwise(ds, times))

    # 6. small-scale lemma, corollary
    out.extend(_small_scale(ds, initial, final, problem, b, times, cons_tol, tol_note, has_steps, converged, status))

    # 7. sharpness of the final point against S_min bounds
    out.extend(_final_sharpness(ds, final, problem, b, converged, status, attrs))

    # 8. residual quantities
    if isinstance(initial, Residual):
        out.extend(_residual(ds, initial, final, problem, b, converged))
    return out


def _final_consistency(ds, final, problem):
    name = "final_weights_consistent"
    src = "consistency of the stored trajectory (w(W_final) is the recorded end point)"
    w = np.asarray(end_to_end(final))
    pi = ds.pi_star.values
    lam = float(ds.attrs["lam"])
    t_end = float(ds.attrs.get("t_final", ds.time.values[-1]))
    if problem is not None and "excess_risk" in ds:
        rec = float(ds.excess_risk.values[-1])
        val = float(problem.excess_risk(jnp.asarray(w)))
        tol = 1e-8 * max(rec, val) + 1e3 * _EPS64**2 * float(problem.Lam) * float(np.sum(pi**2))
        return _judge(name, "R(W_final) − R_min recomputed from the stored weights equals the recorded final excess risk",
                      src, abs(val - rec), 0.0, upper=True, time=t_end, tolerance=tol,
                      note=f"recomputed {val:.3g}, recorded {rec:.3g}; tolerance 1e-8 relative (both are the same formula)")
    if "excess_risk" in ds and lam > 0:
        rec = float(ds.excess_risk.values[-1])
        dist = float(np.linalg.norm(w - pi))
        bound = math.sqrt(max(rec, 0.0) / lam)
        return _judge(name, "‖w(W_final) − π*‖ ≤ √((R − R_min)/λ) with the recorded final excess risk",
                      src, dist, bound, upper=True, time=t_end, tolerance=1e-6 * bound + 1e-12 * np.linalg.norm(pi),
                      note="(w − π*)ᵀΣ̂(w − π*) ≥ λ‖w − π*‖²")
    return _missing(name, "stored final weights reproduce the recorded final excess risk", src, "excess_risk")


def _energy(ds, series, g, times, N, delta, has_steps):
    name = "energy_identity"
    src = "energy identity R(t_i) − R(t_{i+1}) = ∫ ‖∇R‖² dt, theory.md §6 (classical)"
    stmt = ("on intervals between saves where the saved ‖∇R‖² is monotone and varies slowly, Δt·min ≤ "
            "R(t_i) − R(t_{i+1}) ≤ Δt·max of ‖∇R‖² at the two ends")
    if series is None or g is None:
        return _missing(name, stmt, src, "grad_norm_sq and risk/excess_risk")
    drop = series[:-1] - series[1:]
    dt = np.diff(times)
    lo = dt * np.minimum(g[:-1], g[1:])
    hi = dt * np.maximum(g[:-1], g[1:])
    # Saved values cannot exclude a bump of ‖∇R‖² between two saves (the plateau escape
    # can fit between two of them). An interval counts as resolved when ‖∇R‖² changes by
    # less than RESOLVED× across it and across both neighbours; on such an interval
    # ‖∇R‖² is taken to be monotone, so the integral lies in [Δt·min, Δt·max]. Intervals
    # next to a saved extremum of ‖∇R‖² are skipped: it is not monotone there.
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(g[:-1], g[1:]) / np.minimum(g[:-1], g[1:])
    smooth = np.isfinite(ratio) & (ratio <= _RESOLVED)
    resolved = smooth.copy()
    resolved[1:] &= smooth[:-1]
    resolved[:-1] &= smooth[1:]
    sign = np.sign(np.diff(g))
    extremum = np.zeros(len(g), bool)
    extremum[1:-1] = sign[:-1] * sign[1:] <= 0  # a saved extremum: the true one may lie on either side
    resolved &= ~(extremum[:-1] | extremum[1:]) & np.isfinite(drop) & (dt > 0)
    slack = SAFETY * N * np.sqrt(np.maximum(g[:-1], g[1:])) * delta + 8 * _EPS64 * np.abs(series[:-1])
    above, below = drop - hi, lo - drop
    # the worst interval relative to its own scale (drops span twenty decades)
    worst = np.where(resolved, (np.maximum(above, below) - slack) / (hi + slack), -np.inf)
    n_res = int(resolved.sum())
    total = float(series[0] - series[-1])
    covered = float(drop[resolved].sum()) / total if total > 0 else math.nan
    note = (f"{n_res} of {len(dt)} intervals resolved (‖∇R‖² within ×{_RESOLVED:g} across each and its neighbours, "
            "no saved extremum at either end), "
            f"covering {covered:.3g} of the total risk drop; the rest (typically the plateau escape) is not "
            f"resolved by the saves and not checked. Slack {SAFETY:g}·N·max‖∇R‖·δ + round-off per interval")
    if n_res == 0:
        return Check(name, stmt, src, "trend only", note=note)
    j = int(np.argmax(worst))
    upper = above[j] >= below[j]
    return _judge(name, stmt, src, drop[j], hi[j] if upper else lo[j], upper=upper, time=times[j + 1],
                  tolerance=slack[j], assumptions=has_steps, note=note)


def _pl_pointwise(ds, times):
    name = "pl_pointwise"
    src = "PL inequality behind the Lemma, theory.md §4 (holds at every W, any init)"
    stmt = "‖∇R‖²/(R − R_min) ≥ 4λ‖pᵀW_L⋯W_2‖² at every save"
    if "pl_ratio" not in ds or "pl_lower_bound" not in ds:
        return _missing(name, stmt, src, "pl_ratio and pl_lower_bound")
    r, lb = ds.pl_ratio.values, ds.pl_lower_bound.values
    ok = np.isfinite(r) & np.isfinite(lb) & (lb > 0)
    if "excess_risk" in ds:
        ok &= ds.excess_risk.values > 0
    if not ok.any():
        return Check(name, stmt, src, "assumption not met", note="no save with a finite PL ratio")
    rel = np.where(ok, r / np.where(ok, lb, 1.0) - 1.0, np.inf)
    j = int(np.argmin(rel))
    return _judge(name, stmt, src, r[j], lb[j], upper=False, time=times[j], tolerance=1e-9 * lb[j],
                  note="margin at the tightest save; tolerance 1e-9 relative (both sides are exact formulas, "
                  f"only round-off separates them); relative slack there {rel[j]:.3g}")


def _small_scale(ds, initial, final, problem, b, times, cons_tol, tol_note, has_steps, converged, status):
    out = []
    attrs = ds.attrs
    L = initial.depth
    is_mlp = isinstance(initial, MLP) and np.allclose(np.asarray(initial.p), 1.0)
    eps = epsilon(initial)
    small = smallness(eps, L)
    a2, a2_note = _a2(ds, initial, problem)
    lam_ok = float(attrs["lam"]) > 1e-12 * float(attrs["Lam"])
    lemma_ok = is_mlp and a2 and has_steps
    why = []
    if not is_mlp:
        why.append("not an MLP with p = 1")
    if not a2:
        why.append(f"(A2) fails or is unverifiable ({a2_note})")
    if not has_steps:
        why.append("solver settings missing")
    lemma_note = f"ε = {eps:.4g}; " + ("; ".join(why) + "; " if why else "") + tol_note
    src = "Lemma (small-scale invariants), theory.md §4"

    # (i) rank-one gap ≤ ε
    stmt = "rank-one gap ‖W_k‖_F² − ‖W_k‖_2² ≤ ε for all k and t"
    if "rank_one_gap" in ds:
        v = ds.rank_one_gap.values
        i, k = _argmax2(v)
        out.append(_judge("lemma_rank_one", stmt, src, v[i, k], eps, upper=True, time=times[i], tolerance=cons_tol,
                          assumptions=lemma_ok, note=f"worst at layer {k + 1}; " + lemma_note))
    else:
        out.append(_missing("lemma_rank_one", stmt, src, "rank_one_gap"))

    # (ii) |σ_k² − σ_j²| ≤ ε
    stmt = "balanced norms |σ_k² − σ_j²| ≤ ε for all j, k and t"
    if "singular_values" in ds and L >= 2:
        s2 = ds.singular_values.values ** 2
        spread = s2.max(axis=1) - s2.min(axis=1)
        i = int(np.nanargmax(spread))
        out.append(_judge("lemma_balanced_norms", stmt, src, spread[i], eps, upper=True, time=times[i],
                          tolerance=cons_tol, assumptions=lemma_ok, note=lemma_note))
    elif L >= 2:
        out.append(_missing("lemma_balanced_norms", stmt, src, "singular_values"))

    # (iii) ⟨v_{k+1}, u_k⟩² ≥ 1 − ε/σ_{k+1}²
    stmt = "alignment ⟨v_{k+1}, u_k⟩² ≥ 1 − ε/σ_{k+1}² for all k and t"
    if "alignment" in ds and "singular_values" in ds and L >= 2:
        al = ds.alignment.values
        s_up = ds.singular_values.values[:, 1:]
        bound = 1.0 - eps / s_up**2
        tol = cons_tol / s_up**2
        slack = al - bound + tol
        i, k = np.unravel_index(int(np.nanargmin(slack)), slack.shape)
        out.append(_judge("lemma_alignment", stmt, src, al[i, k], bound[i, k], upper=False, time=times[i],
                          tolerance=tol[i, k], assumptions=lemma_ok,
                          note=f"worst at interface {k + 1}; tolerance (conservation tolerance)/σ_{{k+1}}²; " + lemma_note))
    elif L >= 2:
        out.append(_missing("lemma_alignment", stmt, src, "alignment and singular_values"))

    # corollary
    src = "Corollary (small-scale initialization), theory.md §4"
    cor_ok = lemma_ok and small <= 1.0 and lam_ok
    why = list(why)
    if small > 1.0:
        why.append(f"32L√ε = {small:.3g} > 1")
    if not lam_ok:
        why.append("Σ̂ not full rank")
    cor_note = f"ε = {eps:.4g}, 32L√ε = {small:.3g}" + ("; " + "; ".join(why) if why else "")
    t_end = float(attrs.get("t_final", times[-1]))
    stmt = "GF converges to a global minimizer"
    if converged:
        out.append(Check("corollary_converges", stmt, src, "holds" if cor_ok else "assumption not met",
                         note=f"status {status}; " + cor_note, time=t_end))
    elif status in ("non_finite", "solver_failed"):
        out.append(Check("corollary_converges", stmt, src, "violated" if cor_ok else "assumption not met",
                         note=f"status {status}; " + cor_note, time=t_end))
    else:
        out.append(Check("corollary_converges", stmt, src, "trend only" if cor_ok else "assumption not met",
                         note=f"status {status}: the run stopped before convergence; " + cor_note, time=t_end))
    end_ok = cor_ok and converged
    if cor_ok and not converged:
        cor_note += "; the run did not converge, its final point is not the limit"
    Ws = [np.asarray(w) for w in final.layers()]
    gaps = np.array([float(np.sum(np.linalg.svd(w, compute_uv=False)[1:] ** 2)) for w in Ws])
    k = int(gaps.argmax())
    out.append(_judge("corollary_rank_one", "at the limit, ‖W_k‖_F² − ‖W_k‖_2² ≤ ε for all k", src, gaps[k], eps,
                      upper=True, time=t_end, tolerance=cons_tol, assumptions=end_ok,
                      note=f"worst at layer {k + 1}; " + cor_note))
    sv = np.array([np.linalg.svd(w, compute_uv=False)[0] for w in Ws])
    lo_m, hi_m = sv.min() - b["sigma_low"], b["sigma_high"] - sv.max()
    if lo_m <= hi_m:
        k = int(sv.argmin())
        out.append(_judge("corollary_low_norm", "at the limit, (‖π*‖/2)^{1/L} ≤ σ_k ≤ (2‖π*‖)^{1/L} for all k", src,
                          sv[k], b["sigma_low"], upper=False, time=t_end, tolerance=cons_tol,
                          assumptions=end_ok, note=f"tightest: lower side at layer {k + 1}; band [{b['sigma_low']:.4g}, {b['sigma_high']:.4g}]; " + cor_note))
    else:
        k = int(sv.argmax())
        out.append(_judge("corollary_low_norm", "at the limit, (‖π*‖/2)^{1/L} ≤ σ_k ≤ (2‖π*‖)^{1/L} for all k", src,
                          sv[k], b["sigma_high"], upper=True, time=t_end, tolerance=cons_tol,
                          assumptions=end_ok, note=f"tightest: upper side at layer {k + 1}; band [{b['sigma_low']:.4g}, {b['sigma_high']:.4g}]; " + cor_note))
    if L >= 2:
        norm = float(attrs["pi_star_norm"])
        al = np.array([float((np.linalg.svd(Ws[k + 1])[2][0] @ np.linalg.svd(Ws[k])[0][:, 0]) ** 2) for k in range(L - 1)])
        bound = 1.0 - eps / (2.0 * norm) ** (2.0 / L)
        weaker = 1.0 - eps / (norm / 2.0) ** (2.0 / L)
        k = int(al.argmin())
        out.append(_judge("corollary_alignment",
                          "at the limit, ⟨v_{k+1}, u_k⟩² ≥ 1 − ε/(2‖π*‖)^{2/L} (as stated in the slides; unverified against the paper)",
                          src, al[k], bound, upper=False, time=t_end, tolerance=cons_tol / b["sigma_low"] ** 2,
                          assumptions=end_ok,
                          note=f"worst at interface {k + 1}; the Lemma's (iii) with σ ≥ (‖π*‖/2)^{{1/L}} only gives "
                          f"1 − ε/(‖π*‖/2)^{{2/L}} = {weaker:.6g}; " + cor_note))
    S_fin, how = _final_S(ds, final, problem)
    if S_fin is None:
        out.append(_missing("corollary_sharpness", "S_lower ≤ S(W^SI) ≤ 4(Λ/λ)S_upper", src, "sharpness (or pass the Problem)"))
    else:
        out.append(_judge("corollary_sharpness",
                          "S(W^SI) ≤ 4(Λ/λ)·S_min ≤ 4(Λ/λ)·S_upper (and S ≥ S_lower, checked below)",
                          src, S_fin, b["S_corollary_upper"], upper=True, time=t_end, assumptions=end_ok,
                          tolerance=1e-6 * b["S_corollary_upper"],
                          note=f"S {how}; S/S_lower = {S_fin / b['S_lower']:.4g} (headline ratio); " + cor_note))
    return out


def _final_S(ds, final, problem):
    if problem is not None:
        return sharpness(final, problem), "recomputed from the stored final weights"
    if "sharpness" in ds:
        return float(ds.sharpness.values[-1]), "recorded at the last save (Lanczos; a lower estimate)"
    return None, ""


def _final_sharpness(ds, final, problem, b, converged, status, attrs):
    out = []
    src = "Theorem (sharpness of minimizers), theory.md §2"
    lam_ok = float(attrs["lam"]) > 1e-12 * float(attrs["Lam"])
    t_end = float(attrs.get("t_final", ds.time.values[-1]))
    S_fin, how = _final_S(ds, final, problem)
    L = final.depth
    excess = float(ds.excess_risk.values[-1]) if "excess_risk" in ds else math.nan
    dist = math.sqrt(max(excess, 0.0) / float(attrs["lam"])) if lam_ok and np.isfinite(excess) else math.inf
    # S is smooth in W; at an approximate minimizer it differs from the limit's S to first
    # order in the distance: relative 2δ/‖π*‖ through c, and (Λ/a)·L·δ through the residual term.
    norm = float(attrs["pi_star_norm"])
    rel = 1e-6 + (2.0 + L * float(attrs["Lam"]) / float(attrs["a"])) * dist / norm
    why = "" if converged and lam_ok else (f"status {status}" if not converged else "Σ̂ not full rank")
    stmt = "S(W_final) ≥ S_lower = 2cLa (every global minimizer)"
    if S_fin is None:
        out.append(_missing("sharpness_lower_bound", stmt, src, "sharpness (or pass the Problem)"))
        return out
    out.append(_judge("sharpness_lower_bound", stmt, src, S_fin, b["S_lower"], upper=False, time=t_end,
                      tolerance=rel * b["S_lower"], assumptions=converged and lam_ok,
                      note=f"S {how}; S/S_lower = {S_fin / b['S_lower']:.4g}; tolerance first order in "
                      f"‖w − π*‖ ≤ {dist:.2g}" + (f"; {why}" if why else "")))
    if converged and lam_ok:
        nb = norm_sharpness_bound(final.layers(), attrs)
        slides = slides_norm_sharpness_bound(final.layers(), attrs, float(np.linalg.norm(np.asarray(final.p))))
        out.append(_judge("sharpness_norm_bound", "S(W) ≥ 2a‖π*‖² Σ_k ‖W_k‖_F^{−2} at a global minimizer W "
                          "(derived in gflow.theory: the direction (W_k/‖W_k‖_F)_k)", "derived from theory.md §2 "
                          "(Hessian 2JᵀΣ̂J at a minimizer)", S_fin, nb, upper=False, time=t_end, tolerance=rel * nb,
                          note=f"S {how}; the slides' form 2a‖π*‖^{{2−1/L}}‖p‖^{{1/L}}Σ1/‖W_k‖_F = {slides:.6g} "
                          "(reported only; exponents unverified)"))
    return out


def _residual(ds, initial, final, problem, b, converged):
    out = []
    L, d = initial.depth, initial.widths[0]
    src = "Theorem (residual initialization), theory.md §5"
    theta = residual_theta(initial, final)
    t_end = float(ds.attrs.get("t_final", ds.time.values[-1]))
    out.append(Check("residual_theta", "max_k ‖θ_k‖_F with θ_k = L(W_k(∞) − W_k(0)) stays bounded as L grows "
                     "(a constant C_5 depending on s only: compare across depths)", src, "trend only",
                     observed=float(theta.max()), time=t_end,
                     note=f"worst at layer {int(theta.argmax()) + 1}; status {ds.attrs.get('status')}"))
    s = float(ds.attrs["init_scale"]) if "init_scale" in ds.attrs else residual_scale(initial)
    pb = partial_product_bounds(s, d)
    ext0 = partial_product_extremes(initial)
    src_l = "Lemma (products of perturbed matrices, simplified; exponents as in the slides), theory.md §5"
    note = (f"s = {s:.3g}, u = {pb['u']:.3g}, probability ≥ {pb['probability']:.3f}: a violation is a "
            f"{1 - pb['probability']:.0%} event, not a proof of error")
    out.append(_judge("residual_products_upper_init", "‖W_k(0)⋯W_1(0)‖_2 ≤ 4exp(s²/2 + u) for all k (θ = 0)",
                      src_l, ext0[:, 0].max(), pb["upper"], upper=True, time=0.0, note=note))
    out.append(_judge("residual_products_lower_init", "σ_min(W_k(0)⋯W_1(0)) ≥ exp(−2s²/d − u)/4 for all k (θ = 0)",
                      src_l, ext0[:, 1].min(), pb["lower"], upper=False, time=0.0, note=note))
    th2 = max(float(np.linalg.norm(L * (np.asarray(b_) - np.asarray(a_)), 2)) for a_, b_ in zip(initial.layers(), final.layers()))
    ext1 = partial_product_extremes(final)
    in_ball = th2 <= pb["theta_radius"]
    fin_note = note + f"; max‖θ_k‖_2 = {th2:.3g} vs radius {pb['theta_radius']:.3g}"
    out.append(_judge("residual_products_final", "σ_min(P_k) ≥ exp(−2s²/d − u)/4 at the final weights", src_l,
                      ext1[:, 1].min(), pb["lower"], upper=False, time=t_end, assumptions=in_ball, note=fin_note))
    if "partial_product_extremes" in ds:
        v = ds.partial_product_extremes.values
        out.append(Check("residual_products_trajectory", "extreme singular values of the partial products along the "
                         "trajectory (min σ_min shown; the lemma covers only θ in its small ball)", src_l, "trend only",
                         observed=float(np.nanmin(v[..., 1])), bound=pb["lower"],
                         time=float(ds.time.values[int(np.nanargmin(np.nanmin(v[..., 1], axis=1)))]),
                         note=f"max σ_max {float(np.nanmax(v[..., 0])):.4g} vs {pb['upper']:.4g}"))
    S_fin, how = _final_S(ds, final, problem)
    if S_fin is not None:
        out.append(Check("residual_sharpness_ratio", "S(W^RI)/S_lower ≤ CΛ/λ with C depending on s only: "
                         "the ratio does not grow with width or depth", "Corollary (residual initialization), theory.md §5",
                         "trend only", observed=S_fin / b["S_lower"], time=t_end,
                         note=f"S {how}; Λ/λ = {float(ds.attrs['Lam']) / float(ds.attrs['lam']):.4g}"))
    return out


# --- gradient descent --------------------------------------------------------------------


def _check_descent(ds, problem):
    """Checks for a GD Dataset: per-run `final_sharpness`, `step_size`, `status` when present
    (any shape; they are broadcast together), else a single run described by attrs."""
    attrs = ds.attrs
    out = []
    L = int(attrs["depth"])
    p_norm = float(np.linalg.norm(ds["p"].values)) if "p" in ds else 1.0
    b = bounds(attrs, L, p_norm)
    lam_ok = float(attrs["lam"]) > 1e-12 * float(attrs["Lam"])
    if "pl_ratio" in ds and "time" in ds.dims:
        out.append(_pl_pointwise(ds, ds.time.values))
    eta, S, status = _descent_runs(ds)
    if eta is None or status is None:
        out.append(_missing("gd_stability", "S(W_final) ≤ 2/η for GD runs that converge", "linear stability of GD",
                            "step_size and status"))
        return out
    conv = status == "converged"
    src = "linear stability of GD at a minimizer (classical), theory.md §3"
    if S is not None and conv.any():
        r = np.where(conv, S * eta / 2.0, -np.inf)
        j = int(np.argmax(r))
        out.append(_judge("gd_stability", "S(W_final) ≤ 2/η for every converged GD run", src, S[j], 2.0 / eta[j],
                          upper=True, tolerance=0.02 * 2.0 / eta[j],
                          note=f"worst run: η = {eta[j]:.4g}, S·η/2 = {r[j]:.4g}; tolerance 2% (finite-step "
                          f"convergence and an iterative sharpness estimate); {int(conv.sum())} converged runs"))
        rr = np.where(conv, S / b["S_lower"], np.inf)
        j = int(np.argmin(rr))
        out.append(_judge("sharpness_lower_bound", "S(W_final) ≥ S_lower = 2cLa for every converged GD run",
                          "Theorem (sharpness of minimizers), theory.md §2", S[j], b["S_lower"], upper=False,
                          tolerance=0.02 * b["S_lower"], assumptions=lam_ok,
                          note=f"worst run: η = {eta[j]:.4g}, S/S_lower = {rr[j]:.4g}; tolerance 2% (an iterative sharpness estimate "
                          "underestimates; runs stop near, not at, a minimizer)"))
    elif S is None:
        out.append(_missing("gd_stability", "S(W_final) ≤ 2/η for GD runs that converge", src, "final_sharpness"))
    above = eta > b["eta_crit"]
    bad = above & conv
    out.append(Check("gd_fails_above_eta_crit", f"GD with η > η_crit = 2/S_lower = {b['eta_crit']:.4g} does not converge",
                     "Damian, Nichani & Lee reading, theory.md §3 (S_min ≥ S_lower)",
                     ("violated" if bad.any() else "holds") if lam_ok else "assumption not met",
                     observed=float(eta[bad].min()) if bad.any() else (float(eta[above].min()) if above.any() else None),
                     bound=b["eta_crit"],
                     note=f"{int(above.sum())} runs above η_crit, {int(bad.sum())} of them converged"))
    return out


def _descent_runs(ds):
    import xarray as xr

    def get(name, *alts):
        for n in (name, *alts):
            if n in ds.variables:
                return ds[n]
        return None

    eta = get("step_size", "eta")
    S = get("final_sharpness")
    status = get("status")
    if eta is None and "step_size" in ds.attrs:
        eta = xr.DataArray(float(ds.attrs["step_size"]))
    if S is None and "sharpness" in ds and "time" in ds.dims and ds.sharpness.ndim == 1:
        S = ds.sharpness.isel(time=-1)
    if status is None and "status" in ds.attrs:
        status = xr.DataArray(str(ds.attrs["status"]))
    if eta is None or status is None:
        return None, None, None
    arrays = [eta, status] + ([S] if S is not None else [])
    arrays = xr.broadcast(*arrays)
    eta_v = np.asarray(arrays[0].values, float).ravel()
    st = np.asarray(arrays[1].values).ravel()
    st = np.array([s.decode() if isinstance(s, bytes) else str(s) for s in st])
    S_v = np.asarray(arrays[2].values, float).ravel() if S is not None else None
    return eta_v, S_v, st


# --- reports ---------------------------------------------------------------------------


def exit_code(checks: Sequence[Check]) -> int:
    """1 if some check is violated (its assumptions holding), else 0."""
    return int(any(c.verdict == "violated" for c in checks))


def format_table(checks: Sequence[Check]) -> str:
    """A plain-text table for the terminal: name, verdict, observed, bound, margin, time."""
    head = ("check", "verdict", "observed", "bound", "margin", "time")
    rows = [head] + [(c.name, c.verdict, _fmt(c.observed), _fmt(c.bound), _fmt(c.margin), _fmt(c.time)) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n_v = sum(c.verdict == "violated" for c in checks)
    lines.append(f"{len(checks)} checks, {n_v} violated")
    return "\n".join(lines)


def to_markdown(checks: Sequence[Check]) -> str:
    """The checks as a Markdown table, then the statements, sources and notes."""
    out = ["# Theorem checks", "", "| check | verdict | observed | bound | margin | time | source |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in checks:
        out.append(f"| {c.name} | {c.verdict} | {_fmt(c.observed)} | {_fmt(c.bound)} | {_fmt(c.margin)} | "
                   f"{_fmt(c.time)} | {c.source.replace('|', '∣')} |")
    out += ["", "## Statements", ""]
    for c in checks:
        out.append(f"- **{c.name}** ({c.verdict}): {c.statement}. Tolerance {_fmt(c.tolerance)}."
                   + (f" {c.note}." if c.note else ""))
    return "\n".join(out) + "\n"


def write_report(checks: Sequence[Check], folder: str | os.PathLike) -> None:
    """Write `checks.md` and `checks.json` into `folder`, each atomically."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    with atomic_path(os.path.join(folder, "checks.md")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(to_markdown(checks))
    payload = dict(exit_code=exit_code(checks), checks=[c.to_dict() for c in checks])
    with atomic_path(os.path.join(folder, "checks.json")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, ensure_ascii=False, allow_nan=False)


def read_report(folder: str | os.PathLike) -> list[Check]:
    """The checks written by [`write_report`][]."""
    with open(os.path.join(os.fspath(folder), "checks.json"), encoding="utf-8") as f:
        return [Check(**c) for c in json.load(f)["checks"]]


# --- helpers -----------------------------------------------------------------------------


def _constants(problem) -> dict[str, float]:
    if isinstance(problem, Problem):
        return problem.constants()
    return {k: float(problem[k]) for k in ("a", "lam", "Lam", "pi_star_norm")}


def _layers(model) -> list[np.ndarray]:
    if isinstance(model, DeepLinear):
        return [np.asarray(w, np.float64) for w in model.layers()]
    return [np.asarray(w, np.float64) for w in model]


def _trainable(model: DeepLinear) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(model, trainable(model)))]


def _entry_max(model) -> float:
    return max(float(np.max(np.abs(w))) for w in _trainable(model))


def _weight_max(model) -> float:
    return max(float(np.linalg.norm(w)) for w in _layers(model))


def _steps(attrs) -> int:
    return int(attrs.get("num_accepted_steps", attrs.get("num_steps", 0)))


def _argmax2(v) -> tuple[int, int]:
    v = np.where(np.isfinite(v), v, -np.inf)
    i, k = np.unravel_index(int(np.argmax(v)), v.shape)
    return int(i), int(k)


def _a2(ds, initial, problem) -> tuple[bool, str]:
    """(A2) from the Problem, or from the excess risk and gradient recorded at t = 0.

    R(W(0)) − ‖y‖²/n = (w₀ − π*)ᵀΣ̂(w₀ − π*) − π*ᵀΣ̂π*: with `problem` it is formed as
    w₀ᵀΣ̂w₀ − 2w₀ᵀΣ̂π*, free of cancellation (a tiny init puts it near 1e-14).
    """
    if problem is not None:
        ok, v = assumption_a2(initial, problem)
        return ok, f"R(W(0)) − ‖y‖²/n = {v['risk_minus_y_sq']:.3g}, ‖∇R(W(0))‖² = {v['grad_norm_sq_initial']:.3g}"
    if "excess_risk" in ds and "grad_norm_sq" in ds:
        # ‖y‖²/n − R_min = π*ᵀΣ̂π* = a‖π*‖²
        ref = float(ds.attrs["a"]) * float(ds.attrs["pi_star_norm"]) ** 2
        diff, g0 = float(ds.excess_risk.values[0]) - ref, float(ds.grad_norm_sq.values[0])
        if abs(diff) <= 8 * _EPS64 * ref:
            return g0 > 0, (f"R(W(0)) − ‖y‖²/n = {diff:.3g} is round-off from the recorded values (pass the "
                            f"Problem to decide); taken as holding, ‖∇R(W(0))‖² = {g0:.3g}")
        return diff <= 0 and g0 > 0, f"R(W(0)) − ‖y‖²/n = {diff:.3g}, ‖∇R(W(0))‖² = {g0:.3g}"
    return False, "excess_risk and grad_norm_sq at t = 0 not recorded and no Problem given"


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float | int | np.floating):
        return f"{float(v):.4g}"
    return str(v)


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no inf or NaN; the Markdown table keeps them
    return v
