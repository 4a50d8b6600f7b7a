import importlib.metadata
import os
import shutil
import tempfile

ACCELERATOR = any(str(d.metadata["Name"]).lower().replace("_", "-").startswith(("jax-cuda", "jax-rocm"))
                  for d in importlib.metadata.distributions())
"""Whether JAX's CUDA or ROCm plugin is installed: the tests may then run on a GPU, and its
kernels stay optimized (the compile-time gain below was measured on XLA:CPU only)."""

TEST_XLA_FLAGS = ("--xla_cpu_use_fusion_emitters=false",)
if not ACCELERATOR:
    TEST_XLA_FLAGS += ("--xla_backend_optimization_level=0",)
"""XLA's fast-to-compile build for the tests (LLVM unoptimized, the classic CPU emitters;
on a machine with a GPU plugin, the CPU flag only).

The tests compile hundreds of small programs and run each briefly: at their sizes compiling
is most of the suite, and this build compiles it in about half the time (the whole suite:
2300 → 1370 s of work, measured on 2 cores) for programs that run slower (a paper-size GF
solve ~1.4×, GD's loop 3–4×: see `GD_SLOWDOWN`). The programs are the same HLO, computed in
float64 by the same operations: results differ from the optimized build's at round-off,
which every tolerance of the suite allows. Set `GFLOW_TEST_XLA_OPTIMIZED=1` to run the suite
on XLA's default (optimized) build, which `gflow` itself uses. Set here, before any backend
starts; the processes the tests start (`gflow` commands, notebook kernels, Dask workers)
inherit it."""

if not os.environ.get("GFLOW_TEST_XLA_OPTIMIZED"):
    _given = os.environ.get("XLA_FLAGS", "")
    _add = [f for f in TEST_XLA_FLAGS if f.split("=")[0] not in _given]
    os.environ["XLA_FLAGS"] = " ".join([_given, *_add]).strip()

UNOPTIMIZED_XLA = "--xla_backend_optimization_level=0" in os.environ.get("XLA_FLAGS", "")

GD_SLOWDOWN = 3 if UNOPTIMIZED_XLA else 1
"""How many times slower GD's compiled loop runs on the tests' XLA build than on the default
one (measured 3.3–4.3× on 2 cores, rounded down). Tests that need a computation to last a
while (a sweep chunk still running when it is interrupted or its worker killed) divide their
step counts by it, so that it lasts as long on either build."""

import jax
import pytest

import gflow
from gflow import compilation, models, problem, theory

def pytest_configure(config):
    """One JAX compilation cache for the whole session, fresh each time: the `gflow`
    subprocesses, notebook kernels and Dask workers that the tests start read back what an
    earlier one compiled (a test that sets GFLOW_JAX_CACHE itself still can). Processes of
    the session started by it (e.g. test workers) inherit the folder; the first deletes it."""
    if "GFLOW_TEST_CACHE" not in os.environ:
        os.environ["GFLOW_TEST_CACHE"] = tempfile.mkdtemp(prefix="gflow-test-jax-cache-")
        config._gflow_cache_owner = True
    os.environ["GFLOW_JAX_CACHE"] = os.environ["GFLOW_TEST_CACHE"]
    compilation.compilation_cache(os.environ["GFLOW_TEST_CACHE"])


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """After each test, what a solve does before it starts: clear JAX's caches once the
    process holds too many memory mappings (`compilation.release_if_crowded`). Tests also
    compile programs outside solves (checks, curvature, GD grids)."""
    yield
    compilation.release_if_crowded()


def pytest_unconfigure(config):
    if getattr(config, "_gflow_cache_owner", False):
        shutil.rmtree(os.environ.pop("GFLOW_TEST_CACHE"), ignore_errors=True)


LONGEST_FIRST = ("test_notebooks.py", "test_code_blocks.py", "test_faults.py", "test_finite_step_runs.py")
"""The test files with the most work (2–4 minutes each on 2 cores, by `--durations`): collected
first, so that `--dist loadfile` starts them at once and the short files fill the end, rather
than a long file starting last on one worker while the other idles."""


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


OBSERVABLES = (
    "risk",
    "excess_risk",
    "grad_norm_sq",
    "pl_ratio",
    "pl_lower_bound",
    "sharpness",
    "singular_values",
    "rank_one_gap",
    "alignment",
    "balance_drift",
    "weight_norms",
)
"""Everything the checks of theory.md read."""

TIGHT = dict(rtol=1e-10, atol=1e-14, t_max=1e12, saves=120, stop_at_excess_risk=1e-13)
"""Solver settings of the runs held against the theorems in the tests."""


def small_scale_mlp(prob, depth, scale, seed=0):
    """A small-scale MLP satisfying (A2): W_1 → −W_1 flips the sign of R(W(0)) − ‖y‖²/n."""
    model = models.mlp(jax.random.key(seed), models.mlp_widths(prob.d, depth, prob.d), scale)
    if not theory.assumption_a2(model, prob)[0]:
        layers = model.layers()
        model = models.from_layers([-layers[0]] + layers[1:])
    assert theory.assumption_a2(model, prob)[0]
    return model


@pytest.fixture(scope="session")
def prob3():
    """Small data for runs held against the theorems: n = 20, d = 3."""
    return problem.gaussian(20, 3, seed=1)


@pytest.fixture(scope="session")
def l4_run(prob3):
    """GF at L = 4 in the corollary's regime (32L√ε ≤ 1, (A2) holds), every observable recorded."""
    model = small_scale_mlp(prob3, 4, 5e-4)
    return gflow.solve(model, prob3, gflow.FlowOptions(**TIGHT), observables=OBSERVABLES)


@pytest.fixture(scope="session")
def paper_problem():
    """The paper's data at its size: n = 50, d = 5, ‖π*‖ = 1."""
    return problem.gaussian(50, 5, noise=1.0, seed=0)


@pytest.fixture(scope="session")
def paper_mlp():
    """The paper's MLP: L = 10, widths 5, entries N(0, 0.35²)."""
    return models.mlp(jax.random.key(0), models.mlp_widths(5, 10, 5), 0.35)


@pytest.fixture(scope="session")
def paper_run(paper_problem, paper_mlp):
    """GF on the paper's MLP, run to excess risk 1e-14 at rtol 1e-8."""
    opts = gflow.FlowOptions(rtol=1e-8, atol=1e-10, t_max=1e4, saves=200, stop_at_excess_risk=1e-14)
    return gflow.solve(paper_mlp, paper_problem, opts)
