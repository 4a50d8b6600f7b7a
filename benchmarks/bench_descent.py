"""Time the paper's GD: gflow.descent against the authors' per-step loop, and gflow's fused
kernel against its per-step autodiff path.

1. The MLP sweep's chunk at η = 0.005 (scenarios/paper/mlp_sweep.toml: n = 50, d = 5,
   L = 10, widths 5): 320 runs (10 init scales linspace(0.25, 0.6, 10) × 32 seeds) of
   40000 steps, as `gflow.sweep` runs a chunk (no records, final and initial sharpness),
   once with `kernel="fused"` (the default: the gradient written out on Σ̂, π*, runs
   vectorized with the run axis last) and once with `kernel="autodiff"` (the per-step
   `jax.value_and_grad` of the risk under `vmap`, the path it replaced). Each kernel's
   program (GD and the final sharpness) is compiled, timed apart, then run.
2. The whole grid (theory.md §7, MLP small-scale): η ∈ {0.005, 0.02, 0.07, 0.1, 0.2} with
   {40000, 10000, 4000, 4000, 2000} steps × 10 init scales × 20 seeds, final sharpness
   per run, compilation included.

Baseline, the authors' way: a Python loop of jitted GD steps, with sharpness by 20 power
iterations every 5 steps. It is timed on a few runs here, in the same process, per step
size, and extrapolated per run (its cost is the same for every run of a step size).

    python benchmarks/bench_descent.py                 # everything (a few minutes)
    python benchmarks/bench_descent.py --quick         # chunk of 4000 steps, 2 × 4 grid, shorter baseline
    python benchmarks/bench_descent.py --chunk-only --chunk-steps 10000
"""

from __future__ import annotations

import argparse
import importlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from gflow import descent, models, observables as obs, problem
from gflow.descent import scan

gd_run = importlib.import_module("gflow.descent.run")  # the module (gflow.descent.run is also the function)

ETAS = [0.005, 0.02, 0.07, 0.1, 0.2]
STEPS = [40000, 10000, 4000, 4000, 2000]
SCALES = np.linspace(0.25, 0.6, 10)


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


def paper_mlps(scales, seeds):
    return [models.mlp(jax.random.key(s), models.mlp_widths(5, 10, 5), float(sc)) for sc in scales for s in seeds]


def chunk(prob, steps, baseline_us, repeat):
    """The sweep's chunk at η = 0.005, once per kernel, as `gflow.sweep` calls
    `gflow.descent.run` for it (no records, final sharpness), through its parts so that the
    compilation of each kernel's program is timed apart from its run. The runs alternate
    between the kernels `repeat` times and the fastest of each counts (a shared machine's
    load comes and goes)."""
    nets = paper_mlps(SCALES, range(32))
    run_steps = len(nets) * steps
    print(f"chunk: {len(nets)} runs × {steps} steps at η = 0.005 ({run_steps:,} run-steps)"
          + ("" if steps == 40000 else f"; the sweep's chunk runs 40000 steps, {steps} measured"))
    plan = gd_run.validate(nets, prob, [0.005], steps, record_every=None, observables=(), seeds=None, tol=1e-8,
                           diverge_factor=1e6, diverge_above=None, lanczos_steps=40)
    initial = scan.initial_quantities(plan.params, plan.static, prob, 40, True)
    thresholds = jnp.asarray(1e6 * np.asarray(initial.risk))
    args = (plan.params, plan.static, prob, jnp.asarray(plan.step_sizes), thresholds)
    kernels = ("autodiff", "fused")
    programs, compile_s, run_s, results = {}, {}, {k: np.inf for k in kernels}, {}
    for kernel in kernels:
        settings = scan.GridSettings(steps=steps, record_every=plan.record_every[0], observables=(),
                                     record_weights=False, final_sharpness=True, lanczos_steps=40, kernel=kernel)
        start = time.perf_counter()
        programs[kernel] = (scan.grid.lower(*args, settings).compile(), settings)
        compile_s[kernel] = time.perf_counter() - start
    for _ in range(repeat):
        for kernel in kernels:
            compiled, settings = programs[kernel]
            start = time.perf_counter()
            results[kernel] = jax.block_until_ready(compiled(*args, settings))
            run_s[kernel] = min(run_s[kernel], time.perf_counter() - start)
    out = {}
    for kernel in kernels:
        out[kernel] = (run_s[kernel] / run_steps * 1e6, results[kernel])
        print(f"  kernel={kernel:9s} compile {compile_s[kernel]:5.2f} s, run {run_s[kernel]:6.2f} s "
              f"(fastest of {repeat}): {run_s[kernel] / run_steps * 1e6:.3f} µs per run-step")
    old, new = out["autodiff"][0], out["fused"][0]
    print(f"  fused vs autodiff: {old / new:.1f}x faster per run-step")
    if baseline_us is not None:
        print(f"  authors' loop at η = 0.005: {baseline_us:.1f} µs per run-step → "
              f"{baseline_us / old:.0f}x (autodiff), {baseline_us / new:.0f}x (fused)")
    status = {k: gd_run.classify(np.asarray(r.final["excess_risk"]), np.asarray(r.progress_at_half),
                                 np.asarray(r.diverged_at), 1e-8) for k, (_, r) in out.items()}
    same = (status["fused"] == status["autodiff"]).all() and np.array_equal(
        out["fused"][1].diverged_at, out["autodiff"][1].diverged_at)
    counts = {s: int((status["fused"] == s).sum()) for s in descent.STATUSES}
    print(f"  statuses and divergence steps of the two kernels {'identical' if same else 'DIFFER'}: {counts}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4000-step chunk, a 2 × 4 grid and a shorter baseline")
    parser.add_argument("--chunk-steps", type=int, default=None,
                        help="steps of the chunk (default 40000; 4000 with --quick)")
    parser.add_argument("--chunk-only", action="store_true", help="only the chunk (and the baseline at η = 0.005)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of the chunk per kernel, alternating")
    args = parser.parse_args()
    n_scales, n_seeds = (2, 4) if args.quick else (10, 20)
    measure = 300 if args.quick else 1000
    chunk_steps = args.chunk_steps or (4000 if args.quick else 40000)

    prob = problem.gaussian(50, 5, seed=0)
    first = paper_mlps(SCALES[:1], range(1))[0]
    base_005 = baseline_seconds_per_run(first, prob, ETAS[0], STEPS[0], measure)
    print(f"baseline η = 0.005: {base_005:.2f} s per run of {STEPS[0]} steps (from {measure} measured)")
    chunk(prob, chunk_steps, base_005 / STEPS[0] * 1e6, args.repeat)
    if args.chunk_only:
        return

    scales = SCALES[:: 10 // n_scales][:n_scales]
    nets = paper_mlps(scales, range(n_seeds))
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

    per_eta = [base_005]
    for eta, steps in zip(ETAS[1:], STEPS[1:]):
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
