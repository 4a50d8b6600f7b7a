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
# # 01 — Gradient flow from a small-scale initialization
#
# The paper's small-scale experiment (Marion & Chizat 2024; `theory.md` §4, §7): a deep linear
# MLP x ↦ W_L⋯W_1 x with n = 50, d = 5, depth L = 10, hidden widths 5, entries of W_k(0)
# drawn from N(0, 0.35²), trained by **gradient flow** dW_k/dt = −∂R/∂W_k on the paper's
# Gaussian data rescaled so that ‖π*‖ = 1.
#
# We run the scenario file `scenarios/small_scale.toml`, load the run folder back, look at
# the observables recorded along the flow next to the theorem's bounds, and read the theorem
# checks. At the end, a second run in the regime of the paper's corollary (a tiny
# initialization with 32 L √ε ≤ 1), where every statement of §4 applies and holds.

# %%
import os
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np

import gflow
from gflow import experiment, models, problem, theory, trajectory

# %matplotlib inline

# %% [markdown]
# ## Run the scenario, write a run folder, load it back
#
# `experiment.execute` integrates the flow (Diffrax, Tsit5 at rtol 1e-8), records the
# observables at log-spaced save times, holds the trajectory against the theorems and, with
# `out=`, writes a run folder (`trajectory.nc`, `checks.md`/`checks.json`, `summary.md`,
# `figures/`). This is what `gflow run scenarios/small_scale.toml` does on the command line.

# %%
folder = os.path.join(tempfile.mkdtemp(prefix="gflow-nb01-"), "small_scale")
experiment.execute("../scenarios/small_scale.toml", out=folder, overwrite=True)
sorted(os.listdir(folder))

# %% [markdown]
# A finished run folder comes back in memory in two lines: `.flow` is the GF trajectory (an
# `xarray.Dataset` with one variable per observable on the `time` axis), `.checks` the
# theorem checks, `.descent` the GD runs (none here), `.figures` the PNG files.

# %%
run = gflow.load_run(folder)
ds = run.flow
ds

# %%
a = ds.attrs
b = theory.bounds_from_dataset(ds)
print(f"status {a['status']} at t = {a['t_final']:.4g} after {a['num_steps']} solver steps")
print(f"λ = {a['lam']:.4g}, Λ = {a['Lam']:.4g}, a = uᵀΣ̂u = {a['a']:.4g}, ‖π*‖ = {a['pi_star_norm']:.4g}")
print(f"S_lower = 2cLa = {b['S_lower']:.4g} ≤ S_min ≤ S_balanced = {b['S_balanced']:.4g} ≤ S_upper = {b['S_upper']:.4g}")
print(f"S(W(∞)) = {float(ds.sharpness[-1]):.4g}, S(W(∞))/S_lower = {float(ds.sharpness[-1]) / b['S_lower']:.4g}")

# %% [markdown]
# ## Along the flow
#
# Time is on a log axis (the point t = 0 is left out).
#
# - **Sharpness** S(W(t)), the largest eigenvalue of the Hessian of the risk (§2). Every
#   global minimizer has S ≥ S_lower = 2cLa, and the flattest one has S ≤ S_upper; there is
#   no upper bound over all minimizers. The paper's point: GF from a small-scale
#   initialization ends close to the flattest minimizers, within a factor of S_lower.
# - **PL ratio** ‖∇R‖²/(R − R_min) with its pointwise lower bound 4λ‖W_L⋯W_2‖² (§4): the
#   inequality behind the Polyak–Łojasiewicz condition, checkable at every t. Once the
#   network has escaped from 0 the bound is bounded away from 0, and the excess risk decays
#   exponentially.
# - **Singular values** σ_k of each layer, with the corollary's band
#   (‖π*‖/2)^{1/L} ≤ σ_k ≤ (2‖π*‖)^{1/L} for the limit (the corollary is proved for much
#   smaller initializations than this one; see the checks below).
# - **Alignment** ⟨v_{k+1}, u_k⟩² of the top right singular vector of W_{k+1} with the top
#   left one of W_k: 1 when consecutive layers chain as rank-one factors.

# %%
pos = ds.isel(time=ds.time.values > 0)
t = pos.time.values
fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), layout="constrained")

ax = axes[0, 0]
ax.plot(t, pos.sharpness, label="S(W(t))")
ax.axhline(b["S_lower"], color="C3", ls="--", label="S_lower = 2cLa")
ax.axhline(b["S_upper"], color="C3", ls=":", label="S_upper")
ax.set(yscale="log", title="sharpness", ylabel="S")

ax = axes[0, 1]
ax.plot(t, pos.pl_ratio, label="‖∇R‖² / (R − R_min)")
ax.plot(t, pos.pl_lower_bound, "--", color="C3", label="4λ‖W_L⋯W_2‖² (lower bound)")
ax.set(yscale="log", title="PL ratio")

ax = axes[1, 0]
for k in pos.layer.values:
    ax.plot(t, pos.singular_values.sel(layer=k), lw=1, color=plt.cm.viridis(k / pos.sizes["layer"]))
ax.axhspan(b["sigma_low"], b["sigma_high"], color="C2", alpha=0.15, label="(‖π*‖/2)^{1/L} … (2‖π*‖)^{1/L}")
ax.set(title="top singular value σ_k of each layer (dark: k = 1)", ylabel="σ_k")

ax = axes[1, 1]
for k in pos.interface.values:
    ax.plot(t, pos.alignment.sel(interface=k), lw=1, color=plt.cm.viridis(k / pos.sizes["interface"]))
ax.set(title="alignment ⟨v_{k+1}, u_k⟩²", ylim=(-0.05, 1.05))

for ax in axes.flat:
    ax.set_xscale("log")
    ax.set_xlabel("time t")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)

# %% [markdown]
# ## The conservation law
#
# Along exact gradient flow D_k = W_{k+1}ᵀW_{k+1} − W_kW_kᵀ does not move, whatever the
# initialization (§4). Its drift measures the ODE solver's error; the check `conservation`
# below compares it with a tolerance derived from the solver's accepted local errors.
# Excess risk on the right: the plateau, the escape, then exponential convergence.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5), layout="constrained")
ax1.plot(t, pos.balance_drift.max("interface"))
ax1.set(xscale="log", yscale="log", xlabel="time t", title="max_k ‖D_k(t) − D_k(0)‖_F")
ax2.plot(t, pos.excess_risk)
ax2.set(xscale="log", yscale="log", xlabel="time t", title="excess risk R − R_min")
for ax in (ax1, ax2):
    ax.grid(alpha=0.3)

# %% [markdown]
# ## Rank-one structure of the final weights
#
# The Dataset keeps the initial and final weights; `trajectory.model_from(ds, "final")`
# rebuilds the network. The theory's picture of the limit is a rank-one chain
# W_k ≈ σ_k u_k v_kᵀ; how close a run comes to it is set by the scale ε of the
# initialization: the conservation law pins W_{k+1}ᵀW_{k+1} − W_kW_kᵀ at its value at t = 0,
# so the rank-one gap ‖W_k‖_F² − ‖W_k‖_2² can only shrink to the order of ε. At scale 0.35
# (ε ≈ 50) the imbalance is of order one: the top singular value of each W_k has grown, but
# the others stay comparable to it — this minimizer is *not* rank-one. Compare with the tiny
# initialization at the end of the notebook.

# %%
final = trajectory.model_from(ds, "final")
initial = trajectory.model_from(ds, "initial")
sv_final = [np.linalg.svd(np.asarray(w), compute_uv=False) for w in final.layers()]
sv_initial = [np.linalg.svd(np.asarray(w), compute_uv=False) for w in initial.layers()]
np.set_printoptions(precision=3, suppress=False, linewidth=110)
for k, s in enumerate(sv_final, 1):
    print(f"W_{k:<2d} singular values {s}   σ_2/σ_1 = {s[1] / s[0] if s.size > 1 else 0:.3f}")

fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
for k, (s0, s1) in enumerate(zip(sv_initial, sv_final), 1):
    ax.scatter(np.full(s0.size, k - 0.12), s0, marker="x", color="0.5", label="W_k(0)" if k == 1 else None)
    ax.scatter(np.full(s1.size, k + 0.12), s1, color="C0", label="W_k(∞)" if k == 1 else None)
ax.set(yscale="log", xlabel="layer k", ylabel="singular values", title="singular values of each layer")
ax.legend()
plt.show()

# %% [markdown]
# ## The theorem checks
#
# One row per statement: the worst observed value along the trajectory, the bound, the margin
# (negative exactly when a statement is violated, solver tolerance included) and the time
# of the worst value. The Lemma's invariants follow from the conservation law and hold for
# every initialization, but with ε ≈ 50 they are vacuous here (no rank-one gap or alignment
# can break them), so they read "not applicable"; the corollary needs 32 L √ε ≤ 1 and (A2),
# so it reads "assumption not met" (the numbers are still shown). What holds for every
# initialization — conservation, monotone risk, the energy identity, the pointwise PL
# inequality, S(W(∞)) ≥ S_lower, the Hessian at the minimizer — is checked and holds.

# %%
eps = theory.epsilon(initial)
print(f"ε = {eps:.4g}, 32 L √ε = {theory.smallness(eps, initial.depth):.4g} (the corollary needs ≤ 1)\n")
print(theory.format_table(run.checks))

# %% [markdown]
# ## In the corollary's regime
#
# With 32 L √ε ≤ 1 and the assumption (A2) (R(W(0)) ≤ ‖y‖²/n, ∇R(W(0)) ≠ 0), the corollary
# says GF converges to a minimizer that is nearly rank-one (‖W_k‖_F² − ‖W_k‖_2² ≤ ε), has
# low norm ((‖π*‖/2)^{1/L} ≤ σ_k ≤ (2‖π*‖)^{1/L}), is aligned, and is flat:
# S_lower ≤ S ≤ 4(Λ/λ) S_min ≤ 4(Λ/λ) S_balanced.
#
# At L = 10 that needs entries ~1e-4 and the flow sits on its plateau until t ≈ 1e27; gflow
# follows it with a reparametrized clock (`FlowOptions(clock="arclength")`, picked
# automatically by the default `clock="auto"`), at a cost of about a minute. Here we keep it
# quick: L = 4, entries of scale 5e-4. (A2) is a coin flip for a tiny initialization
# (flipping the sign of W_1 flips it), so we take the first seed for which it holds.

# %%
prob = problem.gaussian(50, 5, noise=1.0, seed=0)    # the data of the scenario
L_small, scale = 4, 5e-4
for seed in range(20):
    tiny = models.mlp(jax.random.key(seed), models.mlp_widths(5, L_small, 5), scale)
    cb = theory.corollary_bounds(tiny, prob)
    if cb["applies"] and theory.assumption_a2(tiny, prob)[0]:
        break
print(f"seed {seed}: ε = {cb['epsilon']:.3g}, 32 L √ε = {cb['smallness']:.3f}, (A2) holds")

opts = gflow.FlowOptions(t_max=1e9, saves=150, stop_at_excess_risk=1e-13)
ds_small = gflow.solve(tiny, prob, opts)
print(f"{ds_small.attrs['status']} at t = {ds_small.attrs['t_final']:.3g} (clock: {ds_small.attrs['clock']}, "
      f"{ds_small.attrs['num_steps']} steps, {ds_small.attrs['wall_time_s']:.1f} s)")
checks_small = theory.check(ds_small, prob)
print(theory.format_table(checks_small))

# %%
assert all(c.verdict == "holds" for c in checks_small if c.name.startswith(("lemma", "corollary")))

bs = theory.bounds_from_attrs(ds_small.attrs)
pos_s = ds_small.isel(time=ds_small.time.values > 0)
ts = pos_s.time.values
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
axes[0].plot(ts, pos_s.sharpness, label="S(W(t))")
axes[0].axhline(bs["S_lower"], color="C3", ls="--", label="S_lower")
axes[0].axhline(bs["S_corollary_upper"], color="C3", ls=":", label="4(Λ/λ) S_balanced")
axes[0].set(yscale="log", title="sharpness")
for k in pos_s.layer.values:
    axes[1].plot(ts, pos_s.singular_values.sel(layer=k), label=f"σ_{k}")
axes[1].axhspan(bs["sigma_low"], bs["sigma_high"], color="C2", alpha=0.15, label="corollary band")
axes[1].set(yscale="log", title="σ_k: balanced all along (|σ_k² − σ_j²| ≤ ε)")
axes[2].plot(ts, pos_s.rank_one_gap.max("layer"), label="max_k ‖W_k‖_F² − ‖W_k‖_2²")
axes[2].axhline(cb["epsilon"], color="C3", ls="--", label="ε")
axes[2].set(yscale="log", title="rank-one gap")
for ax in axes:
    ax.set(xscale="log", xlabel="time t")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

# %% [markdown]
# Here the final weights are rank-one: one singular value of order (‖π*‖)^{1/L} ≈ 1 per
# layer, the others of the order of the initialization (≲ √ε).

# %%
for k, w in enumerate(trajectory.model_from(ds_small, "final").layers(), 1):
    s_k = np.linalg.svd(np.asarray(w), compute_uv=False)
    print(f"W_{k} singular values {s_k}")
print(f"√ε = {np.sqrt(cb['epsilon']):.3g}")
