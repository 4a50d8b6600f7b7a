"""What a user waits for: `gflow --help`, and `gflow run` on the default scenario, the first
time (empty compilation cache) and every later time (warm cache), with where the time goes.
Another scenario can be given (e.g. scenarios/deep_plateau.toml, on the arc-length clock).

Each figure is measured in fresh processes, as a user meets it. The breakdown of a warm run
(imports, integrating, checks, figures, XLA compilations) comes from a child process that
times the stages of `gflow.experiment.execute` itself. Baseline, measured in the same run: the
flow alone (`gflow.solve` with the risk only, compiled), the least any `gflow run` can cost.

    .venv/bin/python benchmarks/bench_run.py [scenario.toml]
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIO = os.path.join(ROOT, "scenarios", "small_scale.toml")

STAGES = r"""
import json, logging, sys, time
t0 = time.perf_counter()
import gflow
from gflow import compilation, experiment, flow, plots, scenario, theory
compilation.compilation_cache()
t_import = time.perf_counter() - t0
count = {"n": 0}
class Count(logging.Handler):
    def emit(self, record):
        count["n"] += "Finished XLA compilation" in record.getMessage()
logging.getLogger("jax._src.dispatch").addHandler(Count())
logging.getLogger("jax._src.dispatch").setLevel(logging.DEBUG)
import jax
jax.config.update("jax_log_compiles", True)
scen = scenario.load(sys.argv[1])
problem, model = scen.validate_inputs()
t = time.perf_counter(); ds = flow.solve(model, problem, scen.flow.options(), scen.record.observables); t_solve = time.perf_counter() - t
t = time.perf_counter(); checks = theory.check(ds, problem); t_checks = time.perf_counter() - t
t = time.perf_counter(); plots.save_figures(ds, sys.argv[2]); t_fig = time.perf_counter() - t
t = time.perf_counter(); flow.solve(model, problem, scen.flow.options(), ("risk",)); t_bare_first = time.perf_counter() - t
t = time.perf_counter(); flow.solve(model, problem, scen.flow.options(), ("risk",)); t_bare = time.perf_counter() - t
print(json.dumps(dict(imports=t_import, solve=t_solve, checks=t_checks, figures=t_fig, compilations=count["n"],
                      bare_flow=t_bare, bare_flow_first=t_bare_first)))
"""


def wall(argv, env) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, cwd=ROOT, capture_output=True)
    return time.perf_counter() - start


def main():
    scenario = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else SCENARIO
    name = os.path.splitext(os.path.basename(scenario))[0]
    cache = tempfile.mkdtemp(prefix="gflow-bench-cache-")
    env = dict(os.environ, GFLOW_JAX_CACHE=cache)
    gflow = [sys.executable, "-m", "gflow"]
    help_s = min(wall(gflow + ["--help"], env) for _ in range(3))
    out = tempfile.mkdtemp(prefix="gflow-bench-run-")
    runs = [wall(gflow + ["run", scenario, "--out", os.path.join(out, f"r{i}"), "--quiet"], env) for i in range(3)]
    done = subprocess.run([sys.executable, "-c", STAGES, scenario, os.path.join(out, "figures")], check=True,
                          env=env, cwd=ROOT, capture_output=True, text=True)
    stages = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"gflow --help                         {help_s:6.2f} s   (goal ≤ 0.5 s)")
    print(f"gflow run {name}, first time".ljust(37) + f"{runs[0]:6.2f} s   (goal ≤ 8 s; empty compilation cache)")
    print(f"gflow run {name}, later times".ljust(37) + f"{min(runs[1:]):6.2f} s   (goal ≤ 3 s)")
    print("a warm run, stage by stage (in one process):")
    for k in ("imports", "solve", "checks", "figures"):
        print(f"  {k:10s} {stages[k]:6.2f} s")
    print(f"  XLA compilations {stages['compilations']} (read back from the cache when warm)")
    print(f"baseline: the flow alone, risk only  {stages['bare_flow']:6.3f} s after compiling "
          f"(first call {stages['bare_flow_first']:.2f} s); warm run / flow alone = {min(runs[1:]) / stages['bare_flow']:.0f}x")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
