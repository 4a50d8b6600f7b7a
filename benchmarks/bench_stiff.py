"""Stiff gradient flows: RKC2 (`flow.solver = "rkc2"`, gflow/stabilized.py) against Tsit5.

1. The GELU experiment's GF point (scenarios/paper/nonlinear.toml: n = 50, d = 5, L = 10,
   widths 5, GF to t = 1000 or ‖∇R‖² < 1e-10) at scale 0.7, one `gflow.solve` per seed and
   solver, each timed after a first solve has compiled the program. Printed per seed: status,
   steps, seconds, final sharpness, and the ratio Tsit5 / RKC2 of seconds. Tsit5 has the
   scenario's 300,000 steps: on the seeds where S reaches thousands it ends at `max_steps`
   short of t = 1000 (its steps are held near 3/S), which the status column shows; the
   ratio is then a lower bound ("≥").
2. With `--reference`: the first seed again by Tsit5 at rtol 1e-11 (atol 1e-13), and the
   relative differences of the final risk and sharpness of both solvers at the scenario's
   rtol 1e-8 from it: what each solver's tolerance delivers.
3. The stiff linear flow of tests/test_watch.py (Σ̂ with eigenvalues 100 : 1 : 0.01, L = 2),
   to convergence: steps and seconds of both.

    python benchmarks/bench_stiff.py                     # seeds 0 and 2 (Tsit5 takes minutes)
    python benchmarks/bench_stiff.py --seeds 0 1 2 3 --reference
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import numpy as np

import gflow
from gflow import models, problem
from gflow import scenario as scen

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["risk", "sharpness"]


def _timed(model, prob, options):
    start = time.perf_counter()
    ds = gflow.solve(model, prob, options, NAMES)
    return ds, time.perf_counter() - start


def gelu_point(seeds, reference: bool):
    sc = scen.load(os.path.join(ROOT, "scenarios", "paper", "nonlinear.toml"))
    raw = sc.model_dump(mode="json")
    raw["model"]["init"]["scale"] = 0.7
    sc = scen.from_dict(raw)
    prob = sc.build_problem()
    base = dataclasses.replace(sc.flow.options(), saves=2, spacing="linear", t_first=None)
    solvers = {name: dataclasses.replace(base, solver=name) for name in ("rkc2", "tsit5")}
    for options in solvers.values():  # compile both programs
        _timed(sc.build_model(prob.d, seed=seeds[0]), prob, dataclasses.replace(options, t_max=1e-3))
    print(f"GELU GF point, scale 0.7, to t = {base.t_max:g} (rtol {base.rtol:g}, max_steps {base.max_steps:,}):")
    print(f"{'seed':>4s} {'solver':>6s} {'status':>14s} {'steps':>8s} {'seconds':>8s} {'final S':>10s} {'Tsit5/RKC2':>10s}")
    finals = {}
    for seed in seeds:
        model = sc.build_model(prob.d, seed=seed)
        seconds = {}
        for name, options in solvers.items():
            ds, seconds[name] = _timed(model, prob, options)
            finals[seed, name] = float(ds.risk.values[-1]), float(ds.sharpness.values[-1])
            ratio = ""
            if name == "tsit5":  # a run that stopped at max_steps short of t_max did less of the work
                short = ds.attrs["status"] == "max_steps"
                ratio = ("≥" if short else "") + f"{seconds['tsit5'] / seconds['rkc2']:.1f}x"
            print(f"{seed:4d} {name:>6s} {ds.attrs['status']:>14s} {ds.attrs['num_steps']:8,d} {seconds[name]:8.1f} "
                  f"{finals[seed, name][1]:10.2f} {ratio:>10s}", flush=True)
    if reference:
        seed = seeds[0]
        tight = dataclasses.replace(solvers["tsit5"], rtol=1e-11, atol=1e-13, max_steps=2_000_000)
        ds, seconds = _timed(sc.build_model(prob.d, seed=seed), prob, tight)
        R, S = float(ds.risk.values[-1]), float(ds.sharpness.values[-1])
        print(f"reference (seed {seed}, Tsit5 at rtol 1e-11, {ds.attrs['num_steps']:,} steps, {seconds:.0f} s): "
              f"R = {R:.10g}, S = {S:.10g}")
        for name in solvers:
            r, s = finals[seed, name]
            print(f"  {name:>6s} at rtol {base.rtol:g}: risk {abs(r / R - 1):.1e}, sharpness {abs(s / S - 1):.1e} relative")


def linear_stiff():
    base = problem.gaussian(20, 3, seed=1)
    stiff = problem.Problem.from_data(np.asarray(base.X) * np.array([10.0, 1.0, 0.1]), np.asarray(base.y))
    model = models.mlp(jax.random.key(0), models.mlp_widths(3, 2, 3), 0.1)
    print("stiff linear flow (tests/test_watch.py), to convergence:")
    for name in ("rkc2", "tsit5"):
        options = gflow.FlowOptions(t_max=1e4, max_steps=400_000, saves=20, solver=name)
        _timed(model, stiff, dataclasses.replace(options, t_max=1e-3))
        ds, seconds = _timed(model, stiff, options)
        print(f"  {name:>6s}: {ds.attrs['status']} at t = {ds.attrs['t_final']:.4g}, {ds.attrs['num_steps']:,} steps, "
              f"{seconds:.1f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--reference", action="store_true", help="accuracy against Tsit5 at rtol 1e-11")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    gelu_point(args.seeds, args.reference)
    linear_stiff()


if __name__ == "__main__":
    main()
