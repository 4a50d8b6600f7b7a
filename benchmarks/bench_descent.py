"""Time the paper's GD grid: gflow.descent against the authors' per-step loop.

Grid (theory.md §7, MLP small-scale): η ∈ {0.005, 0.02, 0.07, 0.1, 0.2} with
{40000, 10000, 4000, 4000, 2000} steps × 10 init scales linspace(0.25, 0.6, 10) × 20
seeds, final sharpness per run.

Baseline, the authors' way: a Python loop of jitted GD steps, with sharpness by 20 power
iterations every 5 steps. It is timed on a few runs here, in the same process, per step
size, and extrapolated per run to the whole grid (its cost is the same for every run of
a step size). gflow is timed on the whole grid, compilation included.

    python benchmarks/bench_descent.py           # whole grid (~1–3 minutes)
    python benchmarks/bench_descent.py --quick   # 2 scales × 4 seeds, shorter baseline
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from gflow import descent, models, observables as obs, problem

ETAS = [0.005, 0.02, 0.07, 0.1, 0.2]
STEPS = [40000, 10000, 4000, 4000, 2000]


def baseline_seconds_per_run(model, prob, eta, steps, measure_steps):
    """The authors' loop on `measure_steps` steps, scaled to `steps`: jitted step, and every
    5 steps a 20-iteration power method on Hessian-vector products (compiled beforehand)."""
    f, x = obs.flat_risk(model, prob)
    step = jax.jit(lambda x: x - eta * jax.grad(f)(x))
    hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(f), (x,), (v,))[1])

    def power(x):
        v = jnp.ones_like(x) / np.sqrt(x.size)
        for _ in range(20):
            v = hvp(x, v)
            v = v / jnp.linalg.norm(v)
        return float(v @ hvp(x, v))

    step(x).block_until_ready()
    power(x)
    start = time.perf_counter()
    for k in range(measure_steps):
        x = step(x)
        if k % 5 == 0:
            power(x)
    x.block_until_ready()
    return (time.perf_counter() - start) * steps / measure_steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 2 × 4 grid and a shorter baseline")
    args = parser.parse_args()
    n_scales, n_seeds = (2, 4) if args.quick else (10, 20)
    measure = 300 if args.quick else 1000

    prob = problem.gaussian(50, 5, seed=0)
    scales = np.linspace(0.25, 0.6, 10)[:: 10 // n_scales][:n_scales]
    nets = [models.mlp(jax.random.key(s), models.mlp_widths(5, 10, 5), float(sc))
            for sc in scales for s in range(n_seeds)]
    n_runs = len(nets) * len(ETAS)
    print(f"grid: {len(ETAS)} step sizes × {n_scales} scales × {n_seeds} seeds = {n_runs} runs, "
          f"{sum(STEPS) * len(nets):,} GD steps in all")

    start = time.perf_counter()
    ds = descent.run(nets, prob, ETAS, STEPS, observables=(), final_sharpness=True)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    descent.run(nets, prob, ETAS, STEPS, observables=(), final_sharpness=True)
    ours_warm = time.perf_counter() - start
    print(f"gflow.descent.run: {ours:.2f} s with compilation, {ours_warm:.2f} s compiled "
          f"({ours_warm / (sum(STEPS) * len(nets)) * 1e6:.3f} µs per run-step)")

    per_eta = []
    for eta, steps in zip(ETAS, STEPS):
        t = baseline_seconds_per_run(nets[0], prob, eta, steps, min(measure, steps))
        per_eta.append(t)
        print(f"baseline η = {eta}: {t:.2f} s per run of {steps} steps (from {min(measure, steps)} measured)")
    baseline = sum(per_eta) * len(nets)
    print(f"baseline, extrapolated to the grid: {baseline:.0f} s")
    print(f"ratio (baseline / gflow, compilation included): {baseline / ours:.0f}x")
    print(f"ratio (baseline / gflow, compiled): {baseline / ours_warm:.0f}x")
    counts = {s: int((ds.status.values == s).sum()) for s in descent.STATUSES}
    print(f"outcomes: {counts}")


if __name__ == "__main__":
    main()
