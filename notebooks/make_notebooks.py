"""Write the notebooks of this folder from the cell sources below, with no outputs.

    .venv/bin/python notebooks/make_notebooks.py

The .ipynb files are generated: edit this script, not the notebooks, and run it again.
`tests/test_notebooks.py` executes every notebook top to bottom.
"""

from __future__ import annotations

import os
import textwrap

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = """\
import os
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import gflow
from gflow import experiment, models, problem, theory, trajectory

%matplotlib inline"""


def md(text: str):
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str):
    return nbformat.v4.new_code_cell(textwrap.dedent(text).strip())


# --- 01 ----------------------------------------------------------------------------------

NB01 = [
    md(r"""
    # 01 — Gradient flow from a small-scale initialization

    The paper's small-scale experiment (Marion & Chizat 2024; `theory.md` §4, §7): a deep linear
    MLP x ↦ W_L⋯W_1 x with n = 50, d = 5, depth L = 10, hidden widths 5, entries of W_k(0)
    drawn from N(0, 0.35²), trained by **gradient flow** dW_k/dt = −∂R/∂W_k on the paper's
    Gaussian data rescaled so that ‖π*‖ = 1.

    We run the scenario file `scenarios/small_scale.toml`, load the run folder back, look at
    the observables recorded along the flow next to the theorem's bounds, and read the theorem
    checks. At the end, a second run in the regime of the paper's corollary (a tiny
    initialization with 32 L √ε ≤ 1), where every statement of §4 applies and holds.
    """),
    code(SETUP),
    md(r"""
    ## Run the scenario, write a run folder, load it back

    `experiment.execute` integrates the flow (Diffrax, Tsit5 at rtol 1e-8), records the
    observables at log-spaced save times, holds the trajectory against the theorems and, with
    `out=`, writes a run folder (`trajectory.nc`, `checks.md`/`checks.json`, `summary.md`,
    `figures/`). This is what `gflow run scenarios/small_scale.toml` does on the command line.
    """),
    code(r"""
    folder = os.path.join(tempfile.mkdtemp(prefix="gflow-nb01-"), "small_scale")
    experiment.execute("../scenarios/small_scale.toml", out=folder, overwrite=True)
    sorted(os.listdir(folder))
    """),
    md(r"""
    A finished run folder comes back in memory in two lines: `.flow` is the GF trajectory (an
    `xarray.Dataset` with one variable per observable on the `time` axis), `.checks` the
    theorem checks, `.descent` the GD runs (none here), `.figures` the PNG files.
    """),
    code(r"""
    run = gflow.load_run(folder)
    ds = run.flow
    ds
    """),
    code(r"""
    a = ds.attrs
    b = theory.bounds_from_attrs(a)
    print(f"status {a['status']} at t = {a['t_final']:.4g} after {a['num_steps']} solver steps")
    print(f"λ = {a['lam']:.4g}, Λ = {a['Lam']:.4g}, a = uᵀΣ̂u = {a['a']:.4g}, ‖π*‖ = {a['pi_star_norm']:.4g}")
    print(f"S_lower = 2cLa = {b['S_lower']:.4g} ≤ S_min ≤ S_upper = {b['S_upper']:.4g}")
    print(f"S(W(∞)) = {float(ds.sharpness[-1]):.4g}, S(W(∞))/S_lower = {float(ds.sharpness[-1]) / b['S_lower']:.4g}")
    """),
    md(r"""
    ## Along the flow

    Time is on a log axis (the point t = 0 is left out).

    - **Sharpness** S(W(t)), the largest eigenvalue of the Hessian of the risk (§2). Every
      global minimizer has S ≥ S_lower = 2cLa, and the flattest one has S ≤ S_upper; there is
      no upper bound over all minimizers. The paper's point: GF from a small-scale
      initialization ends close to the flattest minimizers, within a factor of S_lower.
    - **PL ratio** ‖∇R‖²/(R − R_min) with its pointwise lower bound 4λ‖W_L⋯W_2‖² (§4): the
      inequality behind the Polyak–Łojasiewicz condition, checkable at every t. Once the
      network has escaped from 0 the bound is bounded away from 0, and the excess risk decays
      exponentially.
    - **Singular values** σ_k of each layer, with the corollary's band
      (‖π*‖/2)^{1/L} ≤ σ_k ≤ (2‖π*‖)^{1/L} for the limit (the corollary is proved for much
      smaller initializations than this one; see the checks below).
    - **Alignment** ⟨v_{k+1}, u_k⟩² of the top right singular vector of W_{k+1} with the top
      left one of W_k: 1 when consecutive layers chain as rank-one factors.
    """),
    code(r"""
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
    """),
    md(r"""
    ## The conservation law

    Along exact gradient flow D_k = W_{k+1}ᵀW_{k+1} − W_kW_kᵀ does not move, whatever the
    initialization (§4). Its drift measures the ODE solver's error; the check `conservation`
    below compares it with a tolerance derived from the solver's accepted local errors.
    Excess risk on the right: the plateau, the escape, then exponential convergence.
    """),
    code(r"""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5), layout="constrained")
    ax1.plot(t, pos.balance_drift.max("interface"))
    ax1.set(xscale="log", yscale="log", xlabel="time t", title="max_k ‖D_k(t) − D_k(0)‖_F")
    ax2.plot(t, pos.excess_risk)
    ax2.set(xscale="log", yscale="log", xlabel="time t", title="excess risk R − R_min")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    """),
    md(r"""
    ## Rank-one structure of the final weights

    The Dataset keeps the initial and final weights; `trajectory.model_from(ds, "final")`
    rebuilds the network. The theory's picture of the limit is a rank-one chain
    W_k ≈ σ_k u_k v_kᵀ; how close a run comes to it is set by the scale ε of the
    initialization: the conservation law pins W_{k+1}ᵀW_{k+1} − W_kW_kᵀ at its value at t = 0,
    so the rank-one gap ‖W_k‖_F² − ‖W_k‖_2² can only shrink to the order of ε. At scale 0.35
    (ε ≈ 50) the imbalance is of order one: the top singular value of each W_k has grown, but
    the others stay comparable to it — this minimizer is *not* rank-one. Compare with the tiny
    initialization at the end of the notebook.
    """),
    code(r"""
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
    ax.legend();
    """),
    md(r"""
    ## The theorem checks

    One row per statement: the worst observed value along the trajectory, the bound, the margin
    (negative exactly when a statement is violated, solver tolerance included) and the time
    of the worst value. The Lemma's invariants and the corollary are proved for
    initializations with 32 L √ε ≤ 1; this one is far outside (ε ≈ 50), so they read
    "assumption not met" (the numbers are still shown). What holds for every initialization —
    conservation, monotone risk, the energy identity, the pointwise PL inequality,
    S(W(∞)) ≥ S_lower — is checked and holds.
    """),
    code(r"""
    eps = theory.epsilon(initial)
    print(f"ε = {eps:.4g}, 32 L √ε = {theory.smallness(eps, initial.depth):.4g} (the corollary needs ≤ 1)\n")
    print(theory.format_table(run.checks))
    """),
    md(r"""
    ## In the corollary's regime

    With 32 L √ε ≤ 1 and the assumption (A2) (R(W(0)) ≤ ‖y‖²/n, ∇R(W(0)) ≠ 0), the corollary
    says GF converges to a minimizer that is nearly rank-one (‖W_k‖_F² − ‖W_k‖_2² ≤ ε), has
    low norm ((‖π*‖/2)^{1/L} ≤ σ_k ≤ (2‖π*‖)^{1/L}), is aligned, and is flat:
    S_lower ≤ S ≤ 4(Λ/λ) S_upper.

    At L = 10 that needs entries ~1e-4 and the flow sits on its plateau until t ≈ 1e27; gflow
    follows it with a reparametrized clock (`FlowOptions(clock="arclength")`, picked
    automatically by the default `clock="auto"`), at a cost of about a minute. Here we keep it
    quick: L = 4, entries of scale 5e-4. (A2) is a coin flip for a tiny initialization
    (flipping the sign of W_1 flips it), so we take the first seed for which it holds.
    """),
    code(r"""
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
    """),
    code(r"""
    assert all(c.verdict == "holds" for c in checks_small if c.name.startswith(("lemma", "corollary")))

    bs = theory.bounds_from_attrs(ds_small.attrs)
    pos_s = ds_small.isel(time=ds_small.time.values > 0)
    ts = pos_s.time.values
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    axes[0].plot(ts, pos_s.sharpness, label="S(W(t))")
    axes[0].axhline(bs["S_lower"], color="C3", ls="--", label="S_lower")
    axes[0].axhline(bs["S_corollary_upper"], color="C3", ls=":", label="4(Λ/λ) S_upper")
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
    """),
    md(r"""
    Here the final weights are rank-one: one singular value of order (‖π*‖)^{1/L} ≈ 1 per
    layer, the others of the order of the initialization (≲ √ε).
    """),
    code(r"""
    for k, w in enumerate(trajectory.model_from(ds_small, "final").layers(), 1):
        s_k = np.linalg.svd(np.asarray(w), compute_uv=False)
        print(f"W_{k} singular values {s_k}")
    print(f"√ε = {np.sqrt(cb['epsilon']):.3g}")
    """),
]


# --- 02 ----------------------------------------------------------------------------------

NB02 = [
    md(r"""
    # 02 — Residual initialization: the weights move by O(1/L)

    The residual network W_k = I + V_k with W_k(0) = I + (s/√(Ld)) N_k and a fixed unit output
    vector p (`theory.md` §5). The theorem: for L and d large enough, with high probability,
    GF converges to a global minimizer

    W_k(∞) = I + (s/√(Ld)) N_k + θ_k / L  with  ‖θ_k‖_F ≤ C_5,

    a constant depending on s only. So θ_k = L (W_k(∞) − W_k(0)) stays bounded as the depth
    grows: each layer moves less and less, and the network ends near its initialization. The
    corollary adds that the minimizer is flat: S(W^RI)/S_min ≤ C Λ/λ, a ratio that does not grow
    with depth.

    We sweep L ∈ {4, 8, 16, 32} at d = 5, s = 0.5, two seeds each, and look at max_k ‖θ_k‖_F and
    S(W(∞))/S_lower against L. Constants C_1…C_5 are unknown, so this is a trend, not a
    pass/fail line.
    """),
    code(SETUP),
    code(r"""
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

    import pandas as pd
    table = pd.DataFrame(rows)
    table.style.format(precision=4)
    """),
    md(r"""
    `max_step` is max_k ‖W_k(∞) − W_k(0)‖_F: it shrinks like 1/L, while θ_k = L·(that) stays
    of the same size at every depth. Every run converged (excess risk below 1e-13).
    """),
    code(r"""
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
    ax.legend(fontsize=8);
    """),
    md(r"""
    Left: max_k ‖θ_k‖_F stays between 2 and 3 from L = 4 to L = 32 while the raw displacement
    max_k ‖W_k(∞) − W_k(0)‖_F falls like 1/L. Right: no single layer takes the correction;
    every ‖θ_k‖_F is of order one at every depth. Middle: S(W(∞))/S_lower stays of order one
    (the corollary bounds it by C·Λ/λ with an unknown C; here Λ/λ ≈ 2.8). With d = 5 we are
    far from the theorem's "d ≥ C_2", so this is an illustration of the trend, not a test of
    the constants.

    The checks of one run (only those of §5 and the ones that apply with the few observables
    recorded here; "trend only" marks statements whose constants are unknown):
    """),
    code(r"""
    L = depths[-1]
    checks = theory.check(runs[L, seeds[0]]["ds"], prob)
    print(theory.format_table([c for c in checks if c.name.startswith(("residual", "sharpness", "final"))]))
    """),
    md(r"""
    Convergence itself is fast and gets faster with depth (t_final in the table): near the
    identity the PL constant grows like L‖p‖², unlike the small-scale initialization, which
    sits on a plateau first.
    """),
    code(r"""
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    for L in depths:
        ds = runs[L, seeds[0]]["ds"]
        keep = ds.time.values > 0
        ax.plot(ds.time.values[keep], ds.excess_risk.values[keep], label=f"L = {L}")
    ax.set(xscale="log", yscale="log", xlabel="time t", ylabel="R − R_min", title="excess risk along GF")
    ax.grid(alpha=0.3)
    ax.legend();
    """),
]


# --- 03 ----------------------------------------------------------------------------------

NB03 = [
    md(r"""
    # 03 — Gradient flow against gradient descent

    GD with step size η, W ← W − η∇R, started from the same initialization as GF (`theory.md`
    §3). Its step k sits at GF time t = kη. Two facts to see:

    - GD cannot converge to a minimizer whose sharpness exceeds 2/η. Since every minimizer has
      S ≥ S_lower, GD must fail for every η > η_crit = 2/S_lower.
    - From a small-scale initialization the sharpness at the end of GD does **not** ride the
      line 2/η: it is nearly independent of η and close to the sharpness GF reaches, until η
      approaches the edge where GD stops converging.

    The setting is the paper's small-scale MLP (n = 50, d = 5, L = 10, widths 5, entries
    N(0, 0.35²)), four initializations.
    """),
    code(SETUP.replace("from gflow import experiment, models", "from gflow import compare, descent, models")
          .replace("%matplotlib inline", "from IPython.display import Markdown\n%matplotlib inline")),
    code(r"""
    prob = problem.gaussian(50, 5, noise=1.0, seed=0)
    L = 10
    nets = [models.mlp(jax.random.key(seed), models.mlp_widths(5, L, 5), 0.35) for seed in range(4)]
    b = theory.bounds(prob, L)
    print(f"S_lower = {b['S_lower']:.4g}, S_upper = {b['S_upper']:.4g}, η_crit = 2/S_lower = {b['eta_crit']:.4g}")
    """),
    md(r"""
    ## GD over a grid of step sizes

    `descent.run` runs every (η, initialization) pair as one vectorized `lax.scan`. A run
    diverges (risk blows up), stalls (the excess risk stops decreasing: GD is caught
    oscillating away from a minimizer), or converges (excess risk ≤ 1e-8 after 4000 steps).
    The final sharpness is computed by Lanczos for every run.
    """),
    code(r"""
    etas = np.geomspace(0.005, 0.2, 8)
    gd = descent.run(nets, prob, etas, 4000)
    Markdown(compare.summary_table(gd))
    """),
    md(r"""
    And gradient flow from the same four initializations: S(W_GF) is the η → 0 limit of GD.
    """),
    code(r"""
    flow_opts = gflow.FlowOptions(t_max=1e4, saves=100, stop_at_excess_risk=1e-13)
    flow_obs = ("excess_risk", "sharpness", "end_to_end")
    gf_runs = [gflow.solve(net, prob, flow_opts, observables=flow_obs) for net in nets]
    S_gf = np.array([float(r.sharpness[-1]) for r in gf_runs])
    print("S(W_GF) per initialization:", np.round(S_gf, 3), " statuses:", {r.attrs["status"] for r in gf_runs})
    """),
    md(r"""
    ## Sharpness after training against η

    Dashed: 2/η, the ceiling for any minimizer GD converges to. The GD points sit flat at about
    S(W_GF) (the crosses at the left edge), far below 2/η for small η, and only bend down
    where 2/η comes down to meet them; beyond that GD no longer converges.
    """),
    code(r"""
    fig = compare.sharpness_vs_step_size(gd)
    ax = fig.axes[0]
    ax.scatter(np.full(S_gf.size, etas[0] / 1.4), S_gf, marker="x", color="k", label="GF (η → 0)")
    ax.legend(fontsize=8)
    fig
    """),
    code(r"""
    compare.divergence_vs_step_size(gd)
    """),
    md(r"""
    ## The critical step size

    `descent.critical_step_size` brackets the largest η from which GD converges within the step
    budget (starting at 2/S_lower, halving/doubling, then multisection: 7 step sizes per
    vectorized round). Three numbers to compare:

    - the bisection's η*;
    - η_crit = 2/S_lower: the theory says GD fails above it, so η* ≤ η_crit;
    - 2/S(W_GF): the step size at which the minimizer GF finds would become too sharp. GD may
      converge above it, by finding another, flatter minimizer (implicit regularization of
      large steps).
    """),
    code(r"""
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
    ax.legend(fontsize=8, loc="upper left");
    """),
    md(r"""
    ## Along the way: sharpness over time, GD beside GF

    `compare.run_comparison` runs GF (with a dense solution) and GD from the same network and
    measures ‖W_GD(kη) − W_GF(kη)‖. With a small η, GD shadows GF; close to the edge it
    separates from the flow and ends at a flatter minimizer. (The paper's evolution figure:
    scale 0.35, η ∈ {0.02, 0.1}.)
    """),
    code(r"""
    gf, gd_t = compare.run_comparison(
        nets[0], prob, flow_opts, step_sizes=[0.01, 0.07], steps=1500, record_every=15,
        observables=("risk", "excess_risk", "distance_to_pi_star", "sharpness"),
        flow_observables=flow_obs,
    )
    compare.sharpness_vs_time(gf, gd_t)
    """),
    code(r"""
    compare.distance_to_flow_figure(gd_t)
    """),
    md(r"""
    The checks of §3 on the GD grid: every converged run ends with S_lower ≤ S ≤ 2/η.
    """),
    code(r"""
    print(theory.format_table(theory.check(gd, prob)))
    """),
]


# --- 04 ----------------------------------------------------------------------------------

NB04 = [
    md(r"""
    # 04 — Your own observable, your own initialization

    gflow records observables inside the compiled solve, at every save time. An observable is
    a small pure JAX function of the network (and the problem, and optionally the network at
    t = 0), registered under a name. Once registered, the name can be used in
    `gflow.solve(..., observables=...)` and in a scenario file's `record.observables`.

    Here: three observables of our own, a custom initialization (a balanced rank-one network
    built with `models.from_layers`), the same initialization saved to `.npz` and run from a
    scenario file with `init = {kind = "file", path = ...}`.
    """),
    code(SETUP),
    md(r"""
    ## Registering observables

    `@gflow.observables.register(name, dims=...)` adds a function to the registry. Its output
    has fixed extra dimensions named by `dims`: `()` for a scalar, `("layer",)` for one value
    per layer, `("interface",)` for one per pair of consecutive layers, `("feature",)` for a
    vector in R^d. A function of `(model, problem, initial)` also gets the network at t = 0.
    Everything here runs under `jit`: use `jax.numpy`.
    """),
    code(r"""
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
    """),
    md(r"""
    ## A custom initialization

    A balanced rank-one network: W_k = σ u_k u_{k−1}ᵀ with unit vectors u_0 ∈ R^d, u_k ∈ R^{d_k}
    and u_L = 1. Then W_{k+1}ᵀW_{k+1} = σ² u_k u_kᵀ = W_kW_kᵀ: the conserved quantities D_k are
    all zero, so the network stays balanced along the flow, and its end-to-end regressor is
    σ^L u_0. We take u_0 on the side of π* (u_0ᵀπ* > 0); from the other side a balanced
    rank-one flow has to pass through 0. Beside it, a Gaussian initialization with the same
    per-layer norm σ.
    """),
    code(r"""
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
    """),
    md(r"""
    ## Recording them along the flow

    List the names in `observables=` next to built-in ones. Both networks have the same shapes
    and the same observables, so the second solve reuses the first one's compilation.
    """),
    code(r"""
    opts = gflow.FlowOptions(t_max=1e4, saves=150, stop_at_excess_risk=1e-13)
    record = ("excess_risk", "sharpness", "balance_drift") + mine
    flows = {name: gflow.solve(net, prob, opts, observables=record) for name, net in
             [("balanced rank-one", balanced), ("Gaussian", gaussian)]}
    for name, ds in flows.items():
        print(f"{name:18s} {ds.attrs['status']} at t = {ds.attrs['t_final']:.3g}, S(W(∞)) = {float(ds.sharpness[-1]):.4g}, "
              f"wall {ds.attrs['wall_time_s']:.2f} s")
    flows["balanced rank-one"][list(mine)]
    """),
    code(r"""
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
    """),
    md(r"""
    The balanced rank-one network stays rank-one (stable rank 1) and balanced (D_k stays 0 up
    to the solver's error), and its regressor rotates towards π* while its norm grows; the
    Gaussian one first has to align its layers.

    ## The same initialization from a scenario file

    `models.save_layers` writes W1..WL (and p) to an `.npz`; a scenario takes it with
    `init = {kind = "file", path = ...}` (relative to the scenario file; the depth comes from
    the file). Registered observables can be named in `record.observables` as long as they
    are registered in the process that runs the scenario.
    """),
    code(r"""
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
    """),
    md(r"""
    Weights of your own (from another training run, or built by hand) go the same way: an
    `.npz` with arrays `W1`, …, `WL` (and `p` for a residual network, with
    `model.kind = "residual"`), loaded by `models.load_layers(path, kind)` in Python.
    """),
    code(r"""
    back = models.load_layers(os.path.join(work, "balanced.npz"))
    print(type(back).__name__, "depth", back.depth, "widths", back.widths)
    """),
]


NOTEBOOKS = {
    "01_small_scale.ipynb": NB01,
    "02_residual.ipynb": NB02,
    "03_gf_vs_gd.ipynb": NB03,
    "04_your_own_observable.ipynb": NB04,
}


def main():
    for name, cells in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook()
        nb.cells = cells
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"c{i:02d}"  # stable ids: regenerating gives identical files
        nbformat.validate(nb)
        path = os.path.join(HERE, name)
        with open(path, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        print("wrote", path)


if __name__ == "__main__":
    main()
