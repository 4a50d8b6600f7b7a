"""Time the paper's experiments (scenarios/paper/*.toml) and one configuration both ways.

1. The whole set, as `make paper` runs it: `gflow sweep` on every scenario of
   scenarios/paper/, one after the other, each in a fresh process, at the paper's sizes,
   step sizes, steps and repetition counts, compilation included (the JAX compilation
   cache starts empty, as in a first `make paper`; later scenarios reuse what earlier
   ones compiled, as there). Printed: the wall time of each experiment and of the whole
   set, each against the authors' loop extrapolated to the same GD runs: a Python loop
   of jitted GD steps with 20 power iterations every 5 steps
   (`bench_descent.baseline_seconds_per_run`), timed here per network shape on
   `--measure` steps and multiplied by the experiment's GD steps (the authors' script
   has no gradient-flow point: gflow's GF points are extra work on its side). The
   authors quote about 3 hours on a laptop CPU for their script.
2. One configuration of the paper (MLP n = 50, d = 5, L = 10, scale 0.35, η = 0.02,
   10,000 steps, sharpness by 20 power iterations every 5 steps) timed in this process:
   - the authors' way: a Python loop of jitted GD steps with the power method every 5
     steps (`bench_descent.baseline_seconds_per_run`, run on all 10,000 steps);
   - gflow: `descent.run` doing the same work inside its compiled scan (the same 20-step
     power method, registered here as an observable, recorded every 5 steps), and doing
     what the authors keep (Lanczos sharpness at the end only); one run, and per run of
     the paper's 20-repetition batch.
   float64 throughout (the authors' code runs float32).

    python benchmarks/bench_paper.py             # both parts (the set takes minutes)
    python benchmarks/bench_paper.py --one       # part 2 only
    python benchmarks/bench_paper.py --set       # part 1 only
    python benchmarks/bench_paper.py --reduced   # part 1 on a reduced set: the first two values
                                                 # of each swept key, 5x fewer repetitions
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_descent import baseline_seconds_per_run  # noqa: E402

from gflow import descent, models, observables, problem  # noqa: E402
from gflow import scenario as scen  # noqa: E402
from gflow import sweep as gsweep  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTHORS_SECONDS = 3 * 3600


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def _toml(raw: dict) -> str:
    """A scenario dict as TOML: top-level scalars, then one table per section."""
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for section, table in raw.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]", *(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def reduced(path: str, folder: str, points: int = 2, fewer: int = 5) -> str:
    """A copy of the scenario file `path` in `folder` with the first `points` values of each
    swept key only and `fewer` times fewer repetitions per step size (at least one); the
    paper's sizes, step sizes and steps otherwise. (The last values are the costly ones:
    the GELU network's GF point at scale 0.7 takes up to its 300,000 steps at ~0.5 ms.)"""
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    sweep = raw.get("sweep", {})
    for key, values in sweep.items():
        sweep[key] = values[:points]
    sec = raw["descent"]
    if "reps" in sec:
        cut = lambda r: max(1, r // fewer)  # noqa: E731
        sec["reps"] = [cut(r) for r in sec["reps"]] if isinstance(sec["reps"], list) else cut(sec["reps"])
    out = os.path.join(folder, os.path.basename(path))
    with open(out, "w", encoding="utf-8") as f:
        f.write(_toml(raw))
    return out


def authors_seconds(path: str, measure: int, cache: dict) -> tuple[float, int]:
    """The authors' loop extrapolated to every GD run of the scenario file `path`: per
    network shape, seconds per step (jitted step, power method every 5 steps) measured
    on `measure` steps, times the steps of its runs. (seconds, GD steps)."""
    scenario = scen.load(path)
    the_plan = gsweep.plan(scenario)
    sec = scenario.descent
    steps = sec.steps if isinstance(sec.steps, list) else [sec.steps] * len(sec.step_sizes)
    per_point = sum(int(k) * len(seeds) for k, seeds in zip(steps, the_plan.chunks[0].seeds))
    total, seconds = 0, 0.0
    for chunk in the_plan.chunks:
        for raw in chunk.points:
            point = scen.from_dict(raw, chunk.source)
            prob = point.build_problem()
            model = point.build_model(prob.d, point.seed)
            key = (point.model.kind, point.model.activation, tuple(jax.tree.leaves(jax.tree.map(jnp.shape, model))),
                   prob.n, prob.d)
            if key not in cache:
                cache[key] = baseline_seconds_per_run(model, prob, float(sec.step_sizes[0]), 1, measure)
            seconds += cache[key] * per_point
            total += per_point
    return seconds, total


def whole_set(reduce: bool = False, measure: int = 500):
    paths = sorted(glob.glob(os.path.join(ROOT, "scenarios", "paper", "*.toml")))
    gflow = os.path.join(os.path.dirname(sys.executable), "gflow")
    rows = []
    cache: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if reduce:
            paths = [reduced(p, tmp) for p in paths]
        env = {**os.environ, "GFLOW_JAX_CACHE": os.path.join(tmp, "jax-cache")}
        print(f"{'experiment':26s} {'GD steps':>13s} {'gflow sweep':>12s} {'authors loop':>13s} {'ratio':>7s}")
        for path in paths:
            name = os.path.splitext(os.path.basename(path))[0]
            authors, steps = authors_seconds(path, measure, cache)
            start = time.perf_counter()
            subprocess.run([gflow, "sweep", path, "--out", os.path.join(tmp, name), "--quiet"], check=True, env=env)
            seconds = time.perf_counter() - start
            rows.append((seconds, authors))
            print(f"{name:26s} {steps:13,d} {seconds:10.1f} s {authors:11.0f} s {authors / seconds:6.1f}x", flush=True)
    ours, theirs = (sum(r[i] for r in rows) for i in (0, 1))
    label = "make paper (reduced)" if reduce else "make paper (all)"
    print(f"{label:26s} {'':13s} {ours:10.1f} s {theirs:11.0f} s {theirs / ours:6.1f}x")
    print(f"(authors' loop: extrapolated from {measure} timed steps per network shape, GD runs only; "
          f"the authors quote ~{AUTHORS_SECONDS} s for their script on a laptop CPU"
          + ("" if reduce else f": ratio {AUTHORS_SECONDS / ours:.0f}x") + ")")


@observables.register("sharpness_power20")
def sharpness_power20(model, prob):
    """The authors' estimate: 20 power iterations on Hessian-vector products from the
    normalized ones vector, then the Rayleigh quotient (as `baseline_seconds_per_run`)."""
    f, x = observables.flat_risk(model, prob)
    hvp = lambda v: jax.jvp(jax.grad(f), (x,), (v,))[1]  # noqa: E731

    def power(_, v):
        w = hvp(v)
        return w / jnp.linalg.norm(w)

    v = jax.lax.fori_loop(0, 20, power, jnp.ones_like(x) / jnp.sqrt(x.size))
    return v @ hvp(v)


def one_configuration():
    eta, steps, scale = 0.02, 10_000, 0.35
    prob = problem.gaussian(50, 5, seed=0)
    nets = [models.mlp(jax.random.key(s), models.mlp_widths(5, 10, 5), scale) for s in range(20)]

    baseline = baseline_seconds_per_run(nets[0], prob, eta, steps, steps)
    print(f"authors' loop (jitted step, 20 power iterations every 5 steps): {baseline:.3f} s per run")

    def timed(models_, **kw):
        start = time.perf_counter()
        descent.run(models_, prob, [eta], steps, **kw)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        descent.run(models_, prob, [eta], steps, **kw)
        return cold, time.perf_counter() - start

    same = dict(record_every=5, observables=("sharpness_power20",), final_sharpness=False)
    kept = dict(observables=(), final_sharpness=True)
    rows = [
        ("gflow, same work (power-20 every 5 steps), 1 run", timed(nets[0], **same), 1),
        ("gflow, same work (power-20 every 5 steps), 20 runs", timed(nets, **same), 20),
        ("gflow, what is kept (final sharpness), 1 run", timed(nets[0], **kept), 1),
        ("gflow, what is kept (final sharpness), 20 runs", timed(nets, **kept), 20),
    ]
    for label, (cold, warm), n in rows:
        print(f"{label:52s} {warm / n:7.4f} s per run compiled, {cold:6.2f} s the first call; "
              f"ratio {baseline * n / warm:6.1f}x compiled, {baseline * n / cold:5.1f}x with compilation")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", action="store_true", help="only the one-configuration comparison")
    parser.add_argument("--set", action="store_true", help="only the whole set of experiments")
    parser.add_argument("--reduced", action="store_true", help="the whole set, reduced (see above)")
    parser.add_argument("--measure", type=int, default=500, help="steps of the authors' loop timed per shape")
    args = parser.parse_args()
    if not (args.set or args.reduced):
        one_configuration()
    if not args.one:
        whole_set(args.reduced, args.measure)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
