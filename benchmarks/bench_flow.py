"""Speed of the gradient-flow solve (issue: core engine).

Prints, on this machine, after compilation:
- the paper-size solve (n=50, d=5, L=10, widths 5, scale 0.35) with all observables,
  sharpness included, at 200 save times, and its ratio to the same solve recording only
  the risk (the cost of the observables);
- compile time (first call) and run time for L = 40 (MLP and residual);
- a large network (n = 200, d = 50, L = 20, width 50: 47,550 parameters) with the default
  observables, against the same solve recording the risk only (issue 14: 23.8 s before).
Run: .venv/bin/python benchmarks/bench_flow.py [--large: the large network only]
"""

import time

import jax

import gflow
from gflow import models, observables, problem


def timed(fn, repeat=5):
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return first, best


def main():
    prob = problem.gaussian(50, 5, seed=0)
    # Saves log-spaced over [1e-3, 7.5]: GF converges (excess risk 1e-13) at t ≈ 7.8, so all
    # 200 save times are inside the solve. Past convergence an explicit solver is held back
    # by stability (S ≈ 33), which is why runs stop on the excess-risk event.
    opts = gflow.FlowOptions(rtol=1e-8, atol=1e-10, t_max=7.5, saves=200, t_first=1e-3, stop_at_excess_risk=1e-13)
    model = models.mlp(jax.random.key(0), models.mlp_widths(5, 10, 5), 0.35)
    first_all, all_obs = timed(lambda: gflow.solve(model, prob, opts, observables.DEFAULT))
    first_bare, bare = timed(lambda: gflow.solve(model, prob, opts, ("risk",)))
    ds = gflow.solve(model, prob, opts, observables.DEFAULT)
    print(f"paper size, L=10, {ds.sizes['time']} saves, {ds.attrs['num_steps']} steps, status {ds.attrs['status']}")
    print(f"  all observables (sharpness incl.): {all_obs * 1e3:8.1f} ms   (target <= 1000 ms; compile+run {first_all:.2f} s)")
    print(f"  risk only:                         {bare * 1e3:8.1f} ms   (compile+run {first_bare:.2f} s)")
    print(f"  ratio all / risk only:             {all_obs / bare:8.2f}x")
    for kind in ("mlp", "residual"):
        if kind == "mlp":
            m40 = models.mlp(jax.random.key(0), models.mlp_widths(5, 40, 5), 0.4)
        else:
            m40 = models.residual(jax.random.key(0), 5, 40, 0.5)
        o40 = gflow.FlowOptions(t_max=1e4, saves=200)
        first, best = timed(lambda: gflow.solve(m40, prob, o40, observables.DEFAULT), repeat=2)
        ds = gflow.solve(m40, prob, o40, observables.DEFAULT)
        print(f"L=40 {kind:8s}: compile+first run {first:6.2f} s (target compile <= 10 s), "
              f"run {best * 1e3:7.1f} ms, {ds.attrs['num_steps']} steps, {ds.attrs['status']}")


def large():
    prob = problem.gaussian(200, 50, seed=0)
    # entries N(0, 0.35²·5/50): the layers' norms of the paper's width-5 network at width 50
    model = models.mlp(jax.random.key(0), models.mlp_widths(50, 20, 50), 0.35 * (5 / 50) ** 0.5)
    opts = gflow.FlowOptions(t_max=1e4, saves=200)
    first_all, all_obs = timed(lambda: gflow.solve(model, prob, opts, observables.DEFAULT), repeat=1)
    first_bare, bare = timed(lambda: gflow.solve(model, prob, opts, ("risk",)), repeat=1)
    ds = gflow.solve(model, prob, opts, observables.DEFAULT)
    print(f"n=200 d=50 L=20 width 50: {ds.attrs['num_steps']} steps, status {ds.attrs['status']}")
    print(f"  default observables: {all_obs:7.2f} s (target <= 5 s; compile+run {first_all:.1f} s)")
    print(f"  risk only:           {bare:7.2f} s (compile+run {first_bare:.1f} s); ratio {all_obs / bare:.2f}x")


if __name__ == "__main__":
    import sys

    if "--large" in sys.argv:
        large()
        raise SystemExit

    main()
    large()
