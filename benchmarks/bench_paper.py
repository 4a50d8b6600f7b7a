"""Time the paper's experiments (scenarios/paper/*.toml) and one configuration both ways.

1. The whole set: `gflow sweep` on every scenario of scenarios/paper/, each in a fresh
   process, at the paper's sizes, step sizes, steps and repetition counts, compilation
   included: the JAX compilation cache starts empty, as in a first `make paper`. The
   authors quote about 3 hours on a laptop CPU.
2. One configuration of the paper (MLP n = 50, d = 5, L = 10, scale 0.35, η = 0.02,
   10,000 steps, sharpness by 20 power iterations every 5 steps) timed in this process:
   - the authors' way: a Python loop of jitted GD steps with the power method every 5
     steps (`bench_descent.baseline_seconds_per_run`, run on all 10,000 steps);
   - gflow: `descent.run` doing the same work inside its compiled scan (the same 20-step
     power method, registered here as an observable, recorded every 5 steps), and doing
     what the authors keep (Lanczos sharpness at the end only); one run, and per run of
     the paper's 20-repetition batch.
   float64 throughout (the authors' code runs float32).

    python benchmarks/bench_paper.py            # both parts (the set takes minutes)
    python benchmarks/bench_paper.py --one      # part 2 only
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_descent import baseline_seconds_per_run  # noqa: E402

from gflow import descent, models, observables, problem  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTHORS_SECONDS = 3 * 3600


def whole_set():
    files = sorted(glob.glob(os.path.join(ROOT, "scenarios", "paper", "*.toml")))
    gflow = os.path.join(os.path.dirname(sys.executable), "gflow")
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            name = os.path.splitext(os.path.basename(path))[0]
            start = time.perf_counter()
            subprocess.run([gflow, "sweep", path, "--out", os.path.join(tmp, name), "--quiet"], check=True,
                           env={**os.environ, "GFLOW_JAX_CACHE": os.path.join(tmp, "jax-cache")})
            seconds = time.perf_counter() - start
            total += seconds
            print(f"{name:22s} {seconds:7.1f} s")
    print(f"{'whole paper set':22s} {total:7.1f} s  (authors: ~{AUTHORS_SECONDS} s; ratio {AUTHORS_SECONDS / total:.0f}x)")


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
    args = parser.parse_args()
    one_configuration()
    if not args.one:
        whole_set()


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
