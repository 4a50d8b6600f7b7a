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
# # 02 — Residual initialization: the weights move by O(1/L)
#
# The residual network W_k = I + V_k with W_k(0) = I + (s/√(Ld)) N_k and a fixed unit output
# vector p (`theory.md` §5). The theorem: for L and d large enough, with high probability,
# GF converges to a global minimizer
#
# W_k(∞) = I + (s/√(Ld)) N_k + θ_k / L  with  ‖θ_k‖_F ≤ C_5,
#
# a constant depending on s only. So θ_k = L (W_k(∞) − W_k(0)) stays bounded as the depth
# grows: each layer moves less and less, and the network ends near its initialization. The
# corollary adds that the minimizer is flat: S(W^RI)/S_min ≤ C Λ/λ, a ratio that does not grow
# with depth.
#
# We sweep L ∈ {4, 8, 16, 32} at d = 5, s = 0.5, two seeds each, and look at max_k ‖θ_k‖_F and
# S(W(∞))/S_lower against L. Constants C_1…C_5 are unknown, so this is a trend, not a
# pass/fail line.

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import gflow
from gflow import models, problem, theory, trajectory

# %matplotlib inline

# %%
prob = problem.gaussian(50, 5, noise=1.0, seed=0)
d, s = prob.d, 0.5
depths, seeds = [4, 8, 16, 32], [0, 1]
opts = gflow.FlowOptions(t_max=1e4, saves=100, stop_at_excess_risk=1e-13)
record = ("excess_risk", "distance_to_pi_star")   # few observables: each depth compiles once

rows, runs = [], {}
for L in depths:
    for seed in seeds:
        net = models.residual(jax.random.key(seed), d, L, s=s)
        ds = gflow.solve(net, prob, opts, observables=record)
        initial, final = trajectory.model_from(ds, "initial"), trajectory.model_from(ds, "final")
        theta = theory.residual_theta(initial, final)              # ‖θ_k‖_F, k = 1..L
        S = theory.sharpness(final, prob)                           # dense Hessian: exact
        b = theory.bounds_from_dataset(ds)                          # ‖p‖ read from the Dataset
        ext = theory.partial_product_extremes(final)                # (σ_max, σ_min) of W_k⋯W_1
        runs[L, seed] = dict(ds=ds, theta=theta)
        rows.append(dict(L=L, seed=seed, status=ds.attrs["status"], t_final=ds.attrs["t_final"],
                         max_theta=theta.max(), max_step=theta.max() / L, S_final=S,
                         S_lower=b["S_lower"], S_upper=b["S_upper"], ratio=S / b["S_lower"],
                         prod_max=ext[:, 0].max(), prod_min=ext[:, 1].min()))

table = pd.DataFrame(rows)
table.style.format(precision=4)

# %% [markdown]
# `max_step` is max_k ‖W_k(∞) − W_k(0)‖_F: it shrinks like 1/L, while θ_k = L·(that) stays
# of the same size at every depth. Every run converged (excess risk below 1e-13).

# %%
assert (table.status == "converged").all()
mean = table.groupby("L").mean(numeric_only=True)

fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
ax = axes[0]
ax.scatter(table.L, table.max_theta, color="C0", alpha=0.6, label="runs")
ax.plot(mean.index, mean.max_theta, "o-", color="C0", label="mean over seeds")
ax.scatter(table.L, table.max_step, color="C1", alpha=0.6)
ax.plot(mean.index, mean.max_step, "s-", color="C1", label="max_k ‖W_k(∞) − W_k(0)‖_F")
ax.set(xscale="log", yscale="log", xlabel="depth L", title="max_k ‖θ_k‖_F, θ_k = L(W_k(∞) − W_k(0))")
ax.legend(fontsize=8)

ax = axes[1]
ax.scatter(table.L, table.ratio, color="C0", alpha=0.6)
ax.plot(mean.index, mean.ratio, "o-", color="C0")
ax.plot(mean.index, mean.S_upper / mean.S_lower, "k:", label="S_upper / S_lower")
ax.axhline(1, color="C3", ls="--", label="S_lower")
ax.set(xscale="log", xlabel="depth L", title="S(W(∞)) / S_lower", ylim=(0, None))
ax.legend(fontsize=8)
for ax in axes[:2]:
    ax.set_xticks(depths, [str(L) for L in depths])
    ax.xaxis.set_minor_locator(plt.NullLocator())

ax = axes[2]
for L in depths:
    th = runs[L, seeds[0]]["theta"]
    ax.plot((np.arange(L) + 0.5) / L, th, "o-", ms=3, label=f"L = {L}")
ax.set(xlabel="relative depth (k − ½)/L", ylabel="‖θ_k‖_F", title=f"‖θ_k‖_F along the network (seed {seeds[0]})")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Left: max_k ‖θ_k‖_F stays between 2 and 3 from L = 4 to L = 32 while the raw displacement
# max_k ‖W_k(∞) − W_k(0)‖_F falls like 1/L. Right: no single layer takes the correction;
# every ‖θ_k‖_F is of order one at every depth. Middle: S(W(∞))/S_lower stays of order one
# (the corollary bounds it by C·Λ/λ with an unknown C; here Λ/λ ≈ 2.8). With d = 5 we are
# far from the theorem's "d ≥ C_2", so this is an illustration of the trend, not a test of
# the constants.
#
# The checks of one run (only those of §5 and the ones that apply with the few observables
# recorded here; "trend only" marks statements whose constants are unknown):

# %%
L = depths[-1]
checks = theory.check(runs[L, seeds[0]]["ds"], prob)
print(theory.format_table([c for c in checks if c.name.startswith(("residual", "sharpness", "final"))]))

# %% [markdown]
# Convergence itself is fast and gets faster with depth (t_final in the table): near the
# identity the PL constant grows like L‖p‖², unlike the small-scale initialization, which
# sits on a plateau first.

# %%
fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
for L in depths:
    ds = runs[L, seeds[0]]["ds"]
    keep = ds.time.values > 0
    ax.plot(ds.time.values[keep], ds.excess_risk.values[keep], label=f"L = {L}")
ax.set(xscale="log", yscale="log", xlabel="time t", ylabel="R − R_min", title="excess risk along GF")
ax.grid(alpha=0.3)
ax.legend()
plt.show()
