"""Speed of the finite-step flows and of GD's sharpness records (issue 14).

Prints, on this machine, for the paper's MLP (n = 50, d = 5, L = 10, widths 5, scale 0.35):
- the central flow at η = 0.07 over 1000 GD steps (t = 70: it reaches the edge and holds
  λ₁ there), and the modified flow over the same time, each recording the risk: the first
  call (tracing + compiling + running) and the best warm call, and the ratio of each warm
  call to gradient flow's over the same horizon, measured in the same run (the baseline);
- the central flow with its interpolant (what a comparison with GD needs):
  `flow.solve_and_interpolate`, one integration, against `solve` then `dense_solution`, two,
  warm, measured in the same run;
- a GD grid (2 initializations × 2 step sizes, 400 steps) recording risk and sharpness every
  100 steps, with the final sharpness: first call and best warm call, against the same grid
  recording the risk only.
Run: .venv/bin/python benchmarks/bench_finite_step.py
"""

import jax
from bench_flow import timed  # benchmarks/ is the script's folder

import gflow
from gflow import descent, flow as flow_, models, problem


def main():
    prob = problem.gaussian(50, 5, noise=1.0, seed=0)
    net = models.mlp(jax.random.key(0), models.mlp_widths(5, 10, 5), 0.35)
    eta = 0.07
    common = dict(t_max=1000 * eta, saves=101, spacing="linear")

    def flow(**kw):
        return lambda: gflow.solve(net, prob, gflow.FlowOptions(**common, **kw), ["risk"])

    _, base = timed(flow(clock="plain"))
    print(f"gradient flow over t = {1000 * eta:g}, risk only (baseline): {base * 1e3:.0f} ms warm")
    for name in ("central", "modified"):
        first, warm = timed(flow(dynamics=name, step_size=eta))
        print(f"{name} flow at η = {eta}: first call {first:.1f} s, warm {warm:.2f} s ({warm / base:.0f}× GF)")

    central = gflow.FlowOptions(**common, dynamics="central", step_size=eta)
    _, twice = timed(lambda: (gflow.solve(net, prob, central, ["risk"]), flow_.dense_solution(net, prob, central)))
    first, once = timed(lambda: flow_.solve_and_interpolate(net, prob, central, ["risk"]))
    print(f"central flow and its interpolant: solve_and_interpolate first call {first:.1f} s, warm {once:.2f} s; "
          f"solve then dense_solution warm {twice:.2f} s ({twice / once:.2f}× slower)")

    nets = [models.mlp(jax.random.key(s), models.mlp_widths(5, 10, 5), 0.3) for s in range(2)]

    def grid(observables):
        return lambda: descent.run(nets, prob, [0.01, 0.04], 400, record_every=100, observables=observables)

    first_risk, warm_risk = timed(grid(("risk",)))
    first, warm = timed(grid(("risk", "sharpness")))
    print(f"GD grid, risk records: first call {first_risk:.1f} s, warm {warm_risk * 1e3:.0f} ms")
    print(f"GD grid, risk and sharpness records: first call {first:.1f} s ({first / first_risk:.1f}× the risk-only"
          f" grid's), warm {warm * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
