"""Crossing the plateau of the corollary's regime (32L√ε ≤ 1) with the arclength clock.

For L = 10, 20, 40 (n = 50, d = 5, widths 5): steps per phase and wall time after
compilation (best of 3), against the plain clock on the same init, which cannot resolve the
escape (it stops on max_steps with R still at its plateau value). Then a moderate init
(L = 10, entries 0.1, escape near t ≈ 5e4) where both clocks work, for a like-for-like cost.

    .venv/bin/python benchmarks/bench_plateau.py
"""

import math
import time

import jax

import gflow
from gflow import models, problem, theory

RECORD = ("excess_risk", "balance_drift", "singular_values", "grad_norm_sq", "pl_ratio")


def corollary_init(depth, margin=0.95):
    """Widths 5, d = 5, entries scaled so that 32L√ε = margin."""
    key, widths = jax.random.key(0), models.mlp_widths(5, depth, 5)
    return models.mlp(key, widths, theory.corollary_scale(models.mlp(key, widths, 1.0), margin))


def timed(model, prob, opts, repeats=3):
    start = time.perf_counter()
    ds = gflow.solve(model, prob, opts, RECORD)
    compile_s = time.perf_counter() - start
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        ds = gflow.solve(model, prob, opts, RECORD)
        best = min(best, time.perf_counter() - start)
    return ds, compile_s, best


def row(name, ds, compile_s, best):
    a = ds.attrs
    print(
        f"{name:<26} {a['clock']:<9} {a['status']:<14} {a['t_switch']:>10.3g} {a['t_final']:>10.3g} "
        f"{float(ds.excess_risk[-1]):>9.2e} {a['num_steps_arclength']:>5} {a['num_steps_plain']:>6} "
        f"{1e3 * best:>8.1f} {compile_s:>8.1f}"
    )


def main():
    prob = problem.gaussian(50, 5, seed=0)
    print(f"{'case':<26} {'clock':<9} {'status':<14} {'t_switch':>10} {'t_final':>10} {'R-R_min':>9} "
          f"{'arc':>5} {'plain':>6} {'ms':>8} {'first s':>8}")
    for depth in (10, 20, 40):
        model = corollary_init(depth)
        name = f"L={depth} 32L√ε={theory.smallness(theory.epsilon(model), depth):.2f}"
        row(name, *timed(model, prob, gflow.FlowOptions(t_max=1e300, saves=100)))
        row("  same, plain clock", *timed(model, prob, gflow.FlowOptions(clock="plain", t_max=1e300, saves=100,
                                                                          max_steps=20_000), repeats=1))
    model = models.mlp(jax.random.key(0), models.mlp_widths(5, 10, 5), 0.1)
    for clock in ("arclength", "plain"):
        row("L=10 scale 0.1", *timed(model, prob, gflow.FlowOptions(clock=clock, t_max=1e6, saves=100)))


if __name__ == "__main__":
    main()
