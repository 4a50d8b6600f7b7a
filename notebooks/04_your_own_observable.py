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
# # 04 — Your own observable, your own initialization
#
# gflow records observables inside the compiled solve, at every save time. An observable is
# a small pure JAX function of the network (and the problem, and optionally the network at
# t = 0), registered under a name. Once registered, the name can be used in
# `gflow.solve(..., observables=...)` and in a scenario file's `record.observables`.
#
# Here: three observables of our own, a custom initialization (a balanced rank-one network
# built with `models.from_layers`), the same initialization saved to `.npz` and run from a
# scenario file with `init = {kind = "file", path = ...}`.

# %%
import os
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import gflow
from gflow import models, problem, theory

# %matplotlib inline

# %% [markdown]
# ## Registering observables
#
# `@gflow.observables.register(name, dims=...)` adds a function to the registry. Its output
# has fixed extra dimensions named by `dims`: `()` for a scalar, `("layer",)` for one value
# per layer, `("interface",)` for one per pair of consecutive layers, `("feature",)` for a
# vector in R^d. A function of `(model, problem, initial)` also gets the network at t = 0.
# Everything here runs under `jit`: use `jax.numpy`.

# %%
@gflow.observables.register("cos_to_pi_star")
def cos_to_pi_star(model, problem):
    "Cosine of the angle between the end-to-end regressor w(W) and π*."
    w = gflow.end_to_end(model)
    return w @ problem.pi_star / (jnp.linalg.norm(w) * jnp.linalg.norm(problem.pi_star))


@gflow.observables.register("stable_rank", dims=("layer",))
def stable_rank(model, problem):
    "‖W_k‖_F² / ‖W_k‖_2² of each layer: 1 for a rank-one layer."
    return gflow.observables.per_layer(lambda w: jnp.sum(w**2) / jnp.linalg.norm(w, 2) ** 2, model)


@gflow.observables.register("distance_from_init")
def distance_from_init(model, problem, initial):
    "(Σ_k ‖W_k(t) − W_k(0)‖_F²)^½."
    return jnp.sqrt(sum(jnp.sum((w - w0) ** 2) for w, w0 in zip(model.layers(), initial.layers())))


mine = ("cos_to_pi_star", "stable_rank", "distance_from_init")
print({name: gflow.observables.REGISTRY[name].description for name in mine})

# %% [markdown]
# ## A custom initialization
#
# A balanced rank-one network: W_k = σ u_k u_{k−1}ᵀ with unit vectors u_0 ∈ R^d, u_k ∈ R^{d_k}
# and u_L = 1. Then W_{k+1}ᵀW_{k+1} = σ² u_k u_kᵀ = W_kW_kᵀ: the conserved quantities D_k are
# all zero, so the network stays balanced along the flow, and its end-to-end regressor is
# σ^L u_0. We take u_0 on the side of π* (u_0ᵀπ* > 0); from the other side a balanced
# rank-one flow has to pass through 0. Beside it, a Gaussian initialization with the same
# per-layer norm σ.

# %%
prob = problem.gaussian(50, 5, noise=1.0, seed=0)
L, d, width, sigma = 6, prob.d, 5, 0.7
widths = models.mlp_widths(d, L, width)

rng = np.random.default_rng(0)
us = [rng.standard_normal(n) for n in widths[:-1]] + [np.ones(1)]
us = [u / np.linalg.norm(u) for u in us]
if us[0] @ np.asarray(prob.pi_star) < 0:
    us[0] = -us[0]
balanced = models.from_layers([sigma * np.outer(us[k + 1], us[k]) for k in range(L)])

gaussian = models.mlp(jax.random.key(0), widths, 1.0)
gaussian = models.from_layers([sigma * w / np.linalg.norm(w) for w in map(np.asarray, gaussian.layers())])

for name, net in [("balanced rank-one", balanced), ("Gaussian", gaussian)]:
    print(f"{name:18s} ε = {theory.epsilon(net):.3g}, ‖W_k‖_F = {[round(float(np.linalg.norm(w)), 3) for w in net.layers()]}")

# %% [markdown]
# ## Recording them along the flow
#
# List the names in `observables=` next to built-in ones. Both networks have the same shapes
# and the same observables, so the second solve reuses the first one's compilation.

# %%
opts = gflow.FlowOptions(t_max=1e4, saves=150, stop_at_excess_risk=1e-13)
record = ("excess_risk", "sharpness", "balance_drift") + mine
flows = {name: gflow.solve(net, prob, opts, observables=record) for name, net in
         [("balanced rank-one", balanced), ("Gaussian", gaussian)]}
for name, ds in flows.items():
    print(f"{name:18s} {ds.attrs['status']} at t = {ds.attrs['t_final']:.3g}, S(W(∞)) = {float(ds.sharpness[-1]):.4g}, "
          f"wall {ds.attrs['wall_time_s']:.2f} s")
flows["balanced rank-one"][list(mine)]

# %%
fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), layout="constrained")
for (name, ds), color in zip(flows.items(), ("C0", "C1")):
    pos = ds.isel(time=ds.time.values > 0)
    t = pos.time.values
    axes[0].plot(t, pos.cos_to_pi_star, color=color, label=name)
    axes[1].plot(t, pos.stable_rank.max("layer"), color=color, label=name)
    axes[2].plot(t, pos.distance_from_init, color=color, label=name)
    axes[3].plot(t, pos.excess_risk, color=color, label=name)
axes[0].set(title="cos(w, π*)")
axes[1].set(title="max_k stable rank of W_k")
axes[2].set(title="distance from the initialization")
axes[3].set(title="excess risk", yscale="log")
for ax in axes:
    ax.set(xscale="log", xlabel="time t")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

# %% [markdown]
# The balanced rank-one network stays rank-one (stable rank 1) and balanced (D_k stays 0 up
# to the solver's error), and its regressor rotates towards π* while its norm grows; the
# Gaussian one first has to align its layers.
#
# ## The same initialization from a scenario file
#
# `models.save_layers` writes W1..WL (and p) to an `.npz`; a scenario takes it with
# `init = {kind = "file", path = ...}` (relative to the scenario file; the depth comes from
# the file). Registered observables can be named in `record.observables` as long as they
# are registered in the process that runs the scenario.

# %%
work = tempfile.mkdtemp(prefix="gflow-nb04-")
models.save_layers(balanced, os.path.join(work, "balanced.npz"))
scenario = f'''
name = "balanced_rank_one"

[data]
kind = "gaussian"
n = 50
d = 5

[model]
kind = "mlp"
init = {{ kind = "file", path = "balanced.npz" }}

[flow]
t_max = {opts.t_max}
saves = {opts.saves}
stop_at_excess_risk = {opts.stop_at_excess_risk}

[record]
observables = {list(record)}
'''
path = os.path.join(work, "balanced.toml")
with open(path, "w") as f:
    f.write(scenario.replace("\n    ", "\n"))
print(open(path).read())

ds_file = gflow.run(path)
same = np.allclose(ds_file.weights_final, flows["balanced rank-one"].weights_final, rtol=0, atol=1e-12, equal_nan=True)
print("status:", ds_file.attrs["status"], "| same final weights as the direct solve:", same)
assert same

# %% [markdown]
# Weights of your own (from another training run, or built by hand) go the same way: an
# `.npz` with arrays `W1`, …, `WL` (and `p` for a residual network, with
# `model.kind = "residual"`), loaded by `models.load_layers(path, kind)` in Python.

# %%
back = models.load_layers(os.path.join(work, "balanced.npz"))
print(type(back).__name__, "depth", back.depth, "widths", back.widths)
