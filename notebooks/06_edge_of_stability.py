# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 — GD at the edge of stability: GF, GD, the modified flow and the central flow
#
# GD with step η, W ← W − η∇R, is stable near a minimizer only if its sharpness S is below
# 2/η (`theory.md` §3). Gradient flow from the paper's small-scale MLP (n = 50, d = 5,
# L = 10, widths 5, entries N(0, 0.35²)) ends at S(W_GF) ≈ 33, so for η > 2/33 ≈ 0.06 GD
# cannot follow GF to its minimizer. What it does instead is train *at the edge of
# stability*: its sharpness rises to 2/η and stays there while the risk keeps falling,
# non-monotonically (Cohen et al., ICLR 2021).
#
# Two continuous-time models of GD at a finite step size, in GD's own time t = kη
# (`theory.md` §8):
#
# - the **modified-equation flow**, GF on R̃ = R + (η/4)‖∇R‖²: GD to second order in η,
#   as long as GD is stable; it knows nothing of the edge;
# - the **central flow** (Cohen, Damian et al., ICLR 2025): GF while S < 2/η; at the edge
#   it holds the top Hessian eigenvalue at 2/η with a correction −½X∇³R[u, u] (X ⪰ 0, the
#   covariance of GD's oscillation), follows GD's trajectory averaged over its oscillations,
#   and predicts GD's averaged risk R + ½⟨X, UᵀHU⟩.
#
# Three step sizes of the paper's sharpness-vs-η figure at this scale: η = 0.02 (2/η = 100,
# far above S(W_GF)), 0.07 (2/η ≈ 28.6, below it: the edge of stability) and 0.1
# (2/η = 20, below even S_lower = 2La ≈ 21, so no minimizer is stable for GD).
# To stay quick, GD runs 1000 steps at each η (t = 20, 70, 100), and the flows run over the
# same time; the central flow, which computes Hessian eigenpairs and third derivatives at
# every evaluation, is the expensive part (its first solve compiles for tens of seconds).

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown

import gflow
from gflow import compare, descent, models, problem, theory

# %matplotlib inline

# %%
prob = problem.gaussian(50, 5, noise=1.0, seed=0)
net = models.mlp(jax.random.key(0), models.mlp_widths(5, 10, 5), 0.35)
b = theory.bounds(prob, 10)
R_min = float(prob.R_min)
print(f"S_lower = 2La = {b['S_lower']:.4g}, η_crit = 2/S_lower = {b['eta_crit']:.4g}")

# %% [markdown]
# ## GD at three step sizes
#
# One vectorized `descent.run`: 1000 steps at each η, the risk and the sharpness (Lanczos)
# recorded every 5 steps. Every 5 steps, an odd number: GD's risk at the edge oscillates
# with period 2, so the records sample both phases.

# %%
etas = [0.02, 0.07, 0.1]
steps = 1000
gd = descent.run(net, prob, etas, steps, record_every=5, observables=["risk", "sharpness"])
Markdown(compare.summary_table(gd))

# %% [markdown]
# ## The flows over the same times
#
# `gflow.flow.solve` with `FlowOptions(dynamics="central", step_size=η)` or
# `dynamics="modified"`, up to t = 1000η. The central flow records beside the observables
# `edge_sharpness` (its top Hessian eigenvalue λ₁), `edge_active` (how many eigenvalues it
# holds at 2/η), `edge_trace` (tr X) and `predicted_risk`.
#
# **Gradient flow** is the central flow at η = 0.02: its sharpness never comes near
# 2/η = 100, so no eigenvalue is ever held, X = 0, and the central flow *is* GF (this is
# what `tests/test_dynamics.py` checks against a separate GF solve). That saves compiling
# a third kind of flow; the cell below checks X = 0 along it.

# %%
central, modified = {}, {}
for eta in etas:
    common = dict(t_max=steps * eta, saves=101, spacing="linear", step_size=eta)
    central[eta] = gflow.flow.solve(net, prob, gflow.flow.FlowOptions(dynamics="central", **common), ["risk"])
    modified[eta] = gflow.flow.solve(net, prob, gflow.flow.FlowOptions(dynamics="modified", **common),
                                     ["risk", "sharpness"])
gf = central[0.02]
assert float(gf.edge_active.max()) == 0 and float(abs(gf.edge_trace).max()) == 0
for eta in etas:
    c, m = central[eta], modified[eta]
    held = c.edge_active.values > 0
    edge = f"holds λ₁ at 2/η from t = {c.time.values[held][0]:.3g} on" if held.any() else "never reaches the edge"
    print(f"η = {eta}: central flow {c.attrs['status']} at t = {c.attrs['t_final']:.3g} ({c.attrs['num_steps']} steps; "
          f"{edge}, at most {int(c.edge_active.max())} held at once); "
          f"modified flow {m.attrs['status']} at t = {m.attrs['t_final']:.3g}")
print(f"GF: S(W_GF) = {float(gf.edge_sharpness[-1]):.4g}, converged at t = {gf.attrs['t_final']:.3g}")

# %% [markdown]
# ## One time axis
#
# Top row η = 0.07, bottom row η = 0.1; time t = kη for GD. Left: the sharpness (GD's by
# Lanczos every 5 steps, the central flow's λ₁, the modified flow's), with 2/η dashed.
# Middle: the excess risk R − R_min, with the central flow's own risk (thin dotted) and its
# prediction of GD's averaged risk (thick dotted). Right: tr X, the size of GD's
# oscillation as the central flow sees it; with one eigenvalue held at 2/η, the predicted
# risk exceeds the central flow's own by ½·tr X·2/η = tr X/η.

# %%
fig, axes = plt.subplots(2, 3, figsize=(13, 7), layout="constrained")
for row, eta in zip(axes, (0.07, 0.1)):
    i = etas.index(eta)
    t_gd = gd.time.values[i]
    c, m = central[eta], modified[eta]
    ax = row[0]
    ax.plot(t_gd, gd.sharpness.values[i, 0], color="C0", lw=0.8, label="GD")
    ax.plot(gf.time, gf.edge_sharpness, "k", lw=2, label="GF")
    ax.plot(m.time, m.sharpness, color="C1", ls="--", lw=2, label="modified flow")
    ax.plot(c.time, c.edge_sharpness, color="C3", ls=":", lw=2.5, label="central flow")
    ax.axhline(2 / eta, color="0.4", ls="--", lw=0.8, label="2/η")
    ax.axhline(b["S_lower"], color="C2", ls="-.", lw=0.8, label="S_lower = 2La")
    ax.set(ylabel="sharpness", title=f"η = {eta}: sharpness", ylim=(0, None))
    ax = row[1]
    ax.plot(t_gd, gd.risk.values[i, 0] - R_min, color="C0", lw=0.8, label="GD")
    ax.plot(gf.time, gf.risk - R_min, "k", lw=2, label="GF")
    ax.plot(m.time, m.risk - R_min, color="C1", ls="--", lw=2, label="modified flow")
    ax.plot(c.time, c.risk - R_min, color="C3", ls=":", lw=1, label="central flow: its own risk")
    ax.plot(c.time, c.predicted_risk - R_min, color="C3", ls=":", lw=2.5, label="central flow: predicted GD risk")
    ax.set(yscale="log", ylim=(1e-9, 3), ylabel="R − R_min", title=f"η = {eta}: excess risk")
    ax = row[2]
    ax.plot(c.time, c.edge_trace, color="C3", lw=1.5)
    ax.set(yscale="log", ylabel="tr X", title=f"η = {eta}: central flow's tr X")
    for ax in row:
        ax.set_xlabel("time t (GD: t = kη)")
        ax.grid(alpha=0.3)
axes[0, 0].legend(fontsize=7, loc="lower right")
axes[0, 1].legend(fontsize=7, loc="upper right")
plt.show()

# %% [markdown]
# Where the prediction and GD meet, as numbers: GD's risk and sharpness averaged over the
# second half of each run, against the central flow's (averaging removes GD's period-2
# oscillation of the risk).

# %%
def late_mean(ds, name, t0):
    """Mean of `name` over t ≥ t0 (a flow that stopped earlier, converged: its last value)."""
    late = ds.time.values >= t0
    return float(np.mean(ds[name].values[late])) if late.any() else float(ds[name].values[-1])


rows = ["| η | GD: mean R − R_min | central: predicted R − R_min | central: own R − R_min | GD: mean S | "
        "GD: S min–max | central λ₁ | modified flow S |", "| --- " * 8 + "|"]
for i, eta in enumerate(etas):
    t_gd = gd.time.values[i]
    half = t_gd[-1] / 2
    late = t_gd >= half
    c, m = central[eta], modified[eta]
    rows.append(f"| {eta} | {max(np.mean(gd.risk.values[i, 0][late]) - R_min, 0):.3e} | "
                f"{late_mean(c, 'predicted_risk', half) - R_min:.3e} | {late_mean(c, 'risk', half) - R_min:.3e} | "
                f"{np.mean(gd.sharpness.values[i, 0][late]):.4g} | {np.min(gd.sharpness.values[i, 0][late]):.4g}–"
                f"{np.max(gd.sharpness.values[i, 0][late]):.4g} | {late_mean(c, 'edge_sharpness', half):.4g} | "
                f"{late_mean(m, 'sharpness', half):.4g} |")
Markdown("\n".join(rows))

# %% [markdown]
# Along the way at η = 0.07: GD's excess risk averaged over two time units around t,
# against the central flow's prediction.

# %%
i, c = etas.index(0.07), central[0.07]
t_gd, r_gd = gd.time.values[i], gd.risk.values[i, 0] - R_min
predicted = np.interp(t_gd, c.time.values, c.predicted_risk.values) - R_min
for T in (10, 20, 30, 50, 70):
    near = np.abs(t_gd - T) < 1
    print(f"t = {T:2d}: GD {np.mean(r_gd[near]):.2e}, predicted {np.mean(predicted[near]):.2e}, "
          f"ratio {np.mean(r_gd[near]) / np.mean(predicted[near]):.2f}")

# %% [markdown]
# ## The sharpness-vs-η figure, as the central flow predicts it
#
# The paper plots GD's sharpness at the end of training against η. The central flow's
# final λ₁ at each η is its prediction of that point; the modified flow's final sharpness
# is the prediction of a model that ignores the edge.

# %%
S_gd = gd.final_sharpness.values[:, 0]
S_gd_mean = np.array([np.mean(gd.sharpness.values[i, 0][gd.time.values[i] >= gd.time.values[i][-1] / 2])
                      for i in range(len(etas))])
S_c = np.array([float(central[eta].edge_sharpness[-1]) for eta in etas])
S_m = np.array([float(modified[eta].sharpness[-1]) for eta in etas])
rows = ["| η | 2/η | GD status | GD final S | GD mean S, 2nd half | central flow final λ₁ | GD final vs central | "
        "GD mean vs central | modified flow final S |", "| --- " * 9 + "|"]
for i, eta in enumerate(etas):
    rows.append(f"| {eta} | {2 / eta:.4g} | {gd.status.values[i, 0]} | {S_gd[i]:.4g} | {S_gd_mean[i]:.4g} | "
                f"{S_c[i]:.4g} | {S_gd[i] / S_c[i] - 1:+.1%} | {S_gd_mean[i] / S_c[i] - 1:+.1%} | {S_m[i]:.4g} |")
Markdown("\n".join(rows))

# %%
fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
grid = np.geomspace(0.015, 0.13, 100)
ax.plot(grid, 2 / grid, color="0.4", ls="--", lw=1, label="2/η")
ax.axhline(b["S_lower"], color="C2", ls="-.", lw=1, label="S_lower = 2La")
ax.axhline(float(gf.edge_sharpness[-1]), color="k", lw=1, label="GF (η → 0)")
ax.plot(etas, S_c, "x:", color="C3", ms=9, mew=2, label="central flow (prediction)")
ax.plot(etas, S_m, "+--", color="C1", ms=10, mew=2, label="modified flow")
for status, marker in (("converged", "o"), ("not_converged", "s"), ("stalled", "v")):
    sel = gd.status.values[:, 0] == status
    if sel.any():
        ax.scatter(np.asarray(etas)[sel], S_gd[sel], marker=marker, s=45, color="C0", zorder=3,
                   label=f"GD after {steps} steps ({status})")
ax.scatter(etas, S_gd_mean, marker="D", s=40, facecolors="none", edgecolors="C0", zorder=3,
           label="GD, mean over the 2nd half")
ax.set(xscale="log", xlabel="step size η", ylabel="final sharpness", ylim=(0, 50),
       title="Final sharpness against η: GD and its continuous-time models")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# **What this shows.**
#
# - **η = 0.02**, below the edge: GD converges to S = 33.18. The central flow never reaches
#   2/η, so it is GF (S = 33.25, converged at t ≈ 7.3); the modified flow ends at 33.18,
#   GD's value to four digits where GF is 0.2% off: while GD is stable the modified equation
#   is the better model, as its O(η²) error says.
# - **η = 0.07**, the edge of stability: GF and the modified flow both converge by t ≈ 7.5 to
#   S ≈ 33, above 2/η = 28.57, where GD is unstable. GD instead swings, from one record to
#   the next, between sharpnesses far above and below 2/η right after the escape (about 15
#   and up to 47.8), a band that narrows onto 2/η (27.0–30.0 over the second half, mean
#   28.50). The central flow has reached 2/η by t = 3.5 and holds it: its final
#   λ₁ = 28.571 is GD's second-half mean to 0.2%, and GD's last iterate (28.35, not
#   converged after 1000 steps) to 0.8%. Its predicted risk is of the size of GD's (GD's,
#   averaged over two time units, is 1.3 times the prediction at t = 10 and 0.87 times at
#   t = 20) but decays more slowly: 0.63 times at t = 30, 0.17 times at t = 70
#   (second-half means 9.5e-5 for GD, 2.3e-4 predicted). The central flow's own risk is
#   far below both (1.6e-7 over the second half): at the edge most of GD's excess risk is
#   the oscillation, the tr X/η of the prediction.
# - **η = 0.1**: 2/η = 20 is below S_lower = 21.05, so no minimizer is stable for GD
#   (η > η_crit = 0.095) and GD stalls, its sharpness swinging between 9.7 and 33.7 over the
#   second half. The central flow holds λ₁ = 20 from t ≈ 3 on and cannot converge either
#   (every minimizer is sharper than 20); its predicted risk, 3.3e-2 on average over the
#   second half, is 15% below GD's mean 3.9e-2, and GD's mean sharpness, 21.5, is 7.5% above
#   its λ₁. GD's *last* iterate (31.2) is 56% above it: one phase of an oscillation, not a
#   limit.
# - The modified flow converges to S ≈ 33 at every η (33.18, 33.01, 32.91), as if GD were
#   stable: it misses the edge altogether.
#
# **The sharpness-vs-η figure, predicted.** At these three step sizes the central flow's final
# sharpness is min(S(W_GF), 2/η): 33.25, 28.57, 20. After 1000 steps GD's finals are 0.2%
# (η = 0.02) and 0.8% (η = 0.07) below it; at η = 0.1 only GD's time-averaged sharpness is
# near it (+7.5%), while its last iterate is off by +56%. So the central flow accounts for the
# bend of the paper's figure, GD's final sharpness leaving S(W_GF) to follow 2/η, and past
# η_crit it predicts GD's averaged risk and sharpness but not the sharpness of any one
# iterate.
