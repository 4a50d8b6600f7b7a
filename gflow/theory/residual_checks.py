"""The residual-initialization statements of theory.md §5 for a GF trajectory."""

from __future__ import annotations

import numpy as np

from .closed_forms import (layer_arrays, partial_product_bounds, partial_product_extremes, residual_scale,
                           residual_theta)
from .context import RunContext
from .verdict import Check, judge

_PRODUCTS = "Lemma (products of perturbed matrices, simplified; lower exponent as corrected in theory.md §8), theory.md §5"


def residual_checks(ctx: RunContext) -> list[Check]:
    """‖θ_k‖ (a trend across depths), the partial products at W(0) (judged) and at W_final
    and along the trajectory (trends: the lemma's radius for θ is never reached in
    practice), and S/S_lower (a trend)."""
    ds, initial, final, t_end = ctx.ds, ctx.initial, ctx.final, ctx.t_end
    L, d = initial.depth, initial.widths[0]
    theta = residual_theta(initial, final)
    out = [Check("residual_theta", "max_k ‖θ_k‖_F with θ_k = L(W_k(∞) − W_k(0)) stays bounded as L grows "
                 "(a constant C_5 depending on s only: compare across depths)",
                 "Theorem (residual initialization), theory.md §5", "trend only",
                 observed=float(theta.max()), time=t_end,
                 note=f"worst at layer {int(theta.argmax()) + 1}; status {ds.attrs.get('status')}")]
    s = float(ds.attrs["init_scale"]) if "init_scale" in ds.attrs else residual_scale(initial)
    pb = partial_product_bounds(s, d)
    ext0 = partial_product_extremes(initial)
    note = (f"s = {s:.3g}, u = {pb['u']:.3g}, probability ≥ {pb['probability']:.3f}: a violation is a "
            f"{1 - pb['probability']:.0%} event, not a proof of error")
    out.append(judge("residual_products_upper_init", "‖W_k(0)⋯W_1(0)‖_2 ≤ 4exp(s²/2 + u) for all k (θ = 0)",
                     _PRODUCTS, ext0[:, 0].max(), pb["upper"], upper=True, time=0.0, note=note))
    out.append(judge("residual_products_lower_init", "σ_min(W_k(0)⋯W_1(0)) ≥ exp(−2s² − u)/4 for all k (θ = 0)",
                     _PRODUCTS, ext0[:, 1].min(), pb["lower"], upper=False, time=0.0, note=note))
    th2 = max(float(np.linalg.norm(L * (b_ - a_), 2)) for a_, b_ in zip(layer_arrays(initial), layer_arrays(final)))
    ext1 = partial_product_extremes(final)
    inside = "inside" if th2 <= pb["theta_radius"] else "outside"
    out.append(Check("residual_products_final", "σ_min(P_k) at the final weights, beside the lemma's exp(−2s² − u)/4 "
                     "(the lemma covers θ with max‖θ_k‖_2 ≤ exp(−2s² − 4u)/64 only)", _PRODUCTS, "trend only",
                     observed=float(ext1[:, 1].min()), bound=pb["lower"], time=t_end,
                     note=note + f"; max‖θ_k‖_2 = {th2:.3g}, {inside} the radius {pb['theta_radius']:.3g}"))
    if "partial_product_extremes" in ds:
        v = ds.partial_product_extremes.values
        out.append(Check("residual_products_trajectory", "extreme singular values of the partial products along the "
                         "trajectory (min σ_min shown; the lemma covers only θ in its small ball)", _PRODUCTS, "trend only",
                         observed=float(np.nanmin(v[..., 1])), bound=pb["lower"],
                         time=float(ds.time.values[int(np.nanargmin(np.nanmin(v[..., 1], axis=1)))]),
                         note=f"max σ_max {float(np.nanmax(v[..., 0])):.4g} vs {pb['upper']:.4g}"))
    S_fin, how = ctx.final_sharpness
    if S_fin is not None:
        out.append(Check("residual_sharpness_ratio", "S(W^RI)/S_lower ≤ CΛ/λ with C depending on s only: "
                         "the ratio does not grow with width or depth", "Corollary (residual initialization), theory.md §5",
                         "trend only", observed=S_fin / ctx.bounds["S_lower"], time=t_end,
                         note=f"S {how}; Λ/λ = {float(ds.attrs['Lam']) / float(ds.attrs['lam']):.4g}"))
    return out
