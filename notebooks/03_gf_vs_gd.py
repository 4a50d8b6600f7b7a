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
# # 03 — Gradient flow against gradient descent
#
# GD with step size η, W ← W − η∇R, started from the same initialization as GF (`theory.md`
# §3). Its step k sits at GF time t = kη. Two facts to see:
#
# - GD cannot converge to a minimizer whose sharpness exceeds 2/η. Since every minimizer has
#   S ≥ S_lower, GD must fail for every η > η_crit = 2/S_lower.
# - From a small-scale initialization the sharpness at the end of GD does **not** ride the
#   line 2/η: it is nearly independent of η and close to the sharpness GF reaches, until η
#   approaches the edge where GD stops converging.
#
# The setting is the paper's small-scale MLP (n = 50, d = 5, L = 10, widths 5, entries
# N(0, 0.35²)), four initializations.

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
L = 10
nets = [models.mlp(jax.random.key(seed), models.mlp_widths(5, L, 5), 0.35) for seed in range(4)]
b = theory.bounds(prob, L)
print(f"S_lower = {b['S_lower']:.4g}, S_upper = {b['S_upper']:.4g}, η_crit = 2/S_lower = {b['eta_crit']:.4g}")

# %% [markdown]
# ## GD over a grid of step sizes
#
# `descent.run` runs every (η, initialization) pair as one vectorized `lax.scan`. A run
# diverges (risk blows up), stalls (the excess risk stops decreasing: GD is caught
# oscillating away from a minimizer), or converges (excess risk ≤ 1e-8 after 4000 steps).
# The final sharpness is computed by Lanczos for every run.

# %%
etas = np.geomspace(0.005, 0.2, 8)
gd = descent.run(nets, prob, etas, 4000)
Markdown(compare.summary_table(gd))

# %% [markdown]
# And gradient flow from the same four initializations: S(W_GF) is the η → 0 limit of GD.

# %%
flow_opts = gflow.FlowOptions(t_max=1e4, saves=100, stop_at_excess_risk=1e-13)
flow_obs = ("excess_risk", "sharpness", "end_to_end")
gf_runs = [gflow.solve(net, prob, flow_opts, observables=flow_obs) for net in nets]
S_gf = np.array([float(r.sharpness[-1]) for r in gf_runs])
print("S(W_GF) per initialization:", np.round(S_gf, 3), " statuses:", {r.attrs["status"] for r in gf_runs})

# %% [markdown]
# ## Sharpness after training against η
#
# Dashed: 2/η, the ceiling for any minimizer GD converges to. The GD points sit flat at about
# S(W_GF) (the crosses at the left edge), far below 2/η for small η, and only bend down
# where 2/η comes down to meet them; beyond that GD no longer converges.

# %%
fig = compare.sharpness_vs_step_size(gd)
ax = fig.axes[0]
ax.scatter(np.full(S_gf.size, etas[0] / 1.4), S_gf, marker="x", color="k", label="GF (η → 0)")
ax.legend(fontsize=8)
fig

# %%
compare.divergence_vs_step_size(gd)

# %% [markdown]
# ## The critical step size
#
# `descent.critical_step_size` brackets the largest η from which GD converges within the step
# budget (starting at 2/S_lower, halving/doubling, then multisection: 7 step sizes per
# vectorized round). Three numbers to compare:
#
# - the bisection's η*;
# - η_crit = 2/S_lower: the theory says GD fails above it, so η* ≤ η_crit;
# - 2/S(W_GF): the step size at which the minimizer GF finds would become too sharp. GD may
#   converge above it, by finding another, flatter minimizer (implicit regularization of
#   large steps).

# %%
crit = descent.critical_step_size(nets[0], prob, 4000, flow_options=flow_opts)
print(f"bisection      η* ∈ [{crit.lower:.5g}, {crit.upper:.5g}]")
print(f"theory         η_crit = 2/S_lower = {crit.eta_theory:.5g}")
print(f"gradient flow  2/S(W_GF)          = {crit.eta_flow:.5g}")
assert crit.upper <= crit.eta_theory * (1 + 1e-9)

ev = np.array([e for e, _ in crit.evaluations])
ok = np.array([st == "converged" for _, st in crit.evaluations])
fig, ax = plt.subplots(figsize=(7, 2.6), layout="constrained")
ax.scatter(ev[ok], np.arange(ev.size)[ok], color="C2", label="converged")
ax.scatter(ev[~ok], np.arange(ev.size)[~ok], color="C3", marker="x", label="failed")
ax.axvline(crit.eta_theory, color="C3", ls=":", label="2/S_lower")
ax.axvline(crit.eta_flow, color="k", ls="--", label="2/S(W_GF)")
ax.set(xscale="log", xlabel="η", ylabel="evaluation #", title="bisection of the critical step size")
ax.legend(fontsize=8, loc="upper left")
plt.show()

# %% [markdown]
# ## Along the way: sharpness over time, GD beside GF
#
# `compare.run_comparison` runs GF (with a dense solution) and GD from the same network and
# measures ‖W_GD(kη) − W_GF(kη)‖. With a small η, GD shadows GF; close to the edge it
# separates from the flow and ends at a flatter minimizer. (The paper's evolution figure:
# scale 0.35, η ∈ {0.02, 0.1}.)

# %%
gf, gd_t = compare.run_comparison(
    nets[0], prob, flow_opts, step_sizes=[0.01, 0.07], steps=1500, record_every=15,
    observables=("risk", "excess_risk", "distance_to_pi_star", "sharpness"),
    flow_observables=flow_obs,
)
compare.sharpness_vs_time(gf, gd_t)

# %%
compare.distance_to_flow_figure(gd_t)

# %% [markdown]
# The checks of §3 on the GD grid: every converged run ends with S_lower ≤ S ≤ 2/η.

# %%
print(theory.format_table(theory.check(gd, prob)))
