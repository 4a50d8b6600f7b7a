"""`compilation.exported`: a solve's (or a check's) traced program kept on disk and read back by
a later process, with the results of the program traced in place, bit for bit.

The suite runs with a compilation cache (tests/conftest.py), so every solve of the other
tests goes through the stored programs; here they are compared with the direct path and
the key is shown to change with everything the trace depends on."""

from __future__ import annotations

import os

import equinox as eqx
import jax
import numpy as np
import pytest

import gflow
from gflow import compilation, flow, models, observables, problem, solver
from gflow.theory import curvature

OPTIONS = dict(rtol=1e-8, atol=1e-10, t_max=50.0, saves=12, stop_at_excess_risk=1e-12, clock="plain")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A fresh folder of stored programs, and no program of this process remembered."""
    monkeypatch.setattr(compilation, "_exported_folder", lambda: str(tmp_path))
    monkeypatch.setattr(compilation, "_PROGRAMS", {})
    return tmp_path


def _direct(monkeypatch, run):
    with monkeypatch.context() as m:
        m.setattr(compilation, "_exported_folder", lambda: None)
        return run()


def _arrays(result) -> list[np.ndarray]:
    datasets = result if isinstance(result, tuple) else (result,)
    out = []
    for ds in datasets:
        if hasattr(ds, "data_vars"):
            out += [np.asarray(ds[v].values) for v in sorted(ds.data_vars)] + [np.asarray(ds.time.values)]
        else:
            out += [np.asarray(x) for x in jax.tree.leaves(ds)]
    return out


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape and np.array_equal(x, y, equal_nan=True)


PROB = problem.gaussian(16, 3, seed=7)
NET = models.mlp(jax.random.key(7), models.mlp_widths(3, 3, 3), 0.6)
RUNS = {
    "default observables": lambda: gflow.solve(NET, PROB, gflow.FlowOptions(**OPTIONS)),
    "modified flow": lambda: gflow.solve(NET, PROB, gflow.FlowOptions(**OPTIONS, dynamics="modified", step_size=0.05),
                                         ["risk", "sharpness"]),
    "with interpolant": lambda: flow.solve_and_interpolate(NET, PROB, gflow.FlowOptions(**OPTIONS), ["risk"]),
    "final curvature, dense": lambda: curvature.final_curvature(NET, PROB),
    "final curvature, Lanczos": lambda: curvature.final_curvature(NET, PROB, dense_up_to=0),
}


@pytest.mark.parametrize("name", RUNS)
def test_a_program_read_back_gives_the_direct_results_bit_for_bit(folder, monkeypatch, name):
    run = RUNS[name]
    direct = _arrays(_direct(monkeypatch, run))
    exported = _arrays(run())
    stored = os.listdir(folder)
    assert stored, "the solve stored no program"
    compilation._PROGRAMS.clear()  # as a new process: read from disk
    loads = []
    real_load = compilation._load
    monkeypatch.setattr(compilation, "_load", lambda *a: loads.append(a) or real_load(*a))
    again = _arrays(run())
    assert loads and all(program is not None for program in map(lambda a: real_load(*a), loads))
    assert sorted(os.listdir(folder)) == sorted(stored), "a program read back was stored again"
    _same(direct, exported)
    _same(direct, again)


def _record_exports(monkeypatch) -> list[tuple[str, str]]:
    """(function name, key) of every program stored from now on."""
    stored, real = [], compilation._export
    monkeypatch.setattr(compilation, "_export", lambda fn, folder, key, *a: stored.append((fn.__qualname__, key))
                        or real(fn, folder, key, *a))
    return stored


def test_a_damaged_program_is_traced_anew(folder, monkeypatch):
    stored = _record_exports(monkeypatch)
    first = _arrays(RUNS["modified flow"]())
    (key,) = [key for name, key in stored if name == "integrate"]
    path = folder / key
    path.write_bytes(path.read_bytes()[:100])
    compilation._PROGRAMS.clear()
    _same(first, _arrays(RUNS["modified flow"]()))
    assert path.stat().st_size > 100, "the damaged program was not replaced"


def test_a_program_jax_export_refuses_is_traced_as_it_is(folder, monkeypatch):
    first = _arrays(RUNS["modified flow"]())

    def refuse(*args, **kwargs):
        raise NotImplementedError("serialization of host_callbacks is not yet implemented")

    compilation._PROGRAMS.clear()
    for path in folder.iterdir():
        path.unlink()
    monkeypatch.setattr(jax.export, "export", refuse)
    _same(first, _arrays(RUNS["modified flow"]()))
    refused = sorted(folder.iterdir())
    assert refused and all(compilation._load(folder, p.name) == compilation.REFUSED for p in refused)
    # a later process reads the refusals and traces as it is, without trying again
    compilation._PROGRAMS.clear()
    tries = _record_exports(monkeypatch)
    _same(first, _arrays(RUNS["modified flow"]()))
    assert tries == [] and sorted(folder.iterdir()) == refused


def test_the_arclength_clock_phase_with_a_root_find_is_stored(folder, monkeypatch):
    """The first phase of the arc-length clock finds its end by a Newton root find, whose QR
    solve is a LAPACK kernel `jax.export` does not serialize by default
    (`compilation.UNGUARANTEED_TARGETS`): stored all the same, and read back bit for bit."""
    net = models.mlp(jax.random.key(4), models.mlp_widths(3, 3, 3), 0.5)

    def run():
        return gflow.solve(net, PROB, gflow.FlowOptions(t_max=1e4, saves=6, clock="arclength"), ["risk"])

    direct = _arrays(_direct(monkeypatch, run))
    stored = _record_exports(monkeypatch)
    exported = _arrays(run())
    keys = dict(stored)
    assert "integrate_plateau" in keys and compilation._load(folder, keys["integrate_plateau"]) != compilation.REFUSED
    compilation._PROGRAMS.clear()
    _same(direct, exported)
    _same(direct, _arrays(run()))


def _key(**changes):
    """The key of a solve's program with some of its arguments changed."""
    captured = {}

    def spy(*args, **kwargs):
        captured.update(args=args, kwargs=kwargs)
        raise StopIteration

    real = solver.integrate
    solver.integrate = spy
    try:
        with pytest.raises(StopIteration):
            gflow.solve(changes.get("net", NET), changes.get("prob", PROB),
                        gflow.FlowOptions(**{**OPTIONS, **changes.get("options", {})}), changes.get("observables"))
    finally:
        solver.integrate = real
    dynamic, static = eqx.partition((captured["args"], captured["kwargs"]), eqx.is_array)
    return compilation.program_key(real, static, jax.tree.leaves(dynamic))


def test_the_key_changes_with_what_the_trace_depends_on(monkeypatch):
    base = _key()
    assert _key() == base
    assert _key(options=dict(rtol=1e-6, t_max=80.0)) == base, "tolerances and horizon are traced inputs"
    changed = {
        "shape": _key(prob=problem.gaussian(17, 3, seed=7)),
        "depth": _key(net=models.mlp(jax.random.key(7), models.mlp_widths(3, 4, 3), 0.6)),
        "solver": _key(options=dict(solver="dopri5")),
        "max_steps": _key(options=dict(max_steps=777)),
        "observables": _key(observables=["risk"]),
        "activation": _key(net=models.mlp(jax.random.key(7), models.mlp_widths(3, 3, 3), 0.6, "gelu"),
                           observables=["risk"]),
    }
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_fast_math=false")
    changed["XLA_FLAGS"] = _key()
    monkeypatch.undo()
    monkeypatch.setattr(compilation, "_source_digest", lambda: "edited")
    changed["gflow source"] = _key()
    keys = [base, *changed.values()]
    assert len(set(keys)) == len(keys), f"keys repeat: {changed}"


def test_a_users_observable_is_never_stored(folder, monkeypatch):
    stored = _record_exports(monkeypatch)
    @observables.register("exported_test_trace")
    def trace(model, problem):
        return sum(jax.numpy.trace(w) for w in model.layers()[1:])

    with pytest.raises(compilation.Unportable):
        _key(observables=["risk", "exported_test_trace"])
    ds = gflow.solve(NET, PROB, gflow.FlowOptions(**OPTIONS), ["risk", "exported_test_trace"])
    assert np.isfinite(ds.exported_test_trace.values).all()
    assert "integrate" not in [name for name, _ in stored]  # the solve's own small programs may be

    original = observables.REGISTRY["risk"]
    try:  # a user's function under a built-in name
        observables.register("risk")(lambda model, problem: 0.0)
        with pytest.raises(compilation.Unportable):
            _key(observables=["risk"])
    finally:
        observables.REGISTRY["risk"] = original
    assert original.portable_name == "observable:risk"


def test_the_default_cache_keeps_a_folder_set_before(monkeypatch):
    calls = []
    monkeypatch.setattr(compilation, "compilation_cache", lambda: calls.append(1) or "/gflow")
    assert compilation._default_cache("/the/users/own") == "/the/users/own" and not calls
    assert compilation._default_cache(None) == "/gflow" and calls


def test_importing_gflow_turns_the_cache_on_outside_its_commands(tmp_path):
    """A script or a notebook that only imports gflow compiles through the cache too."""
    import subprocess
    import sys

    code = "import gflow.flow, jax; print(jax.config.jax_compilation_cache_dir)"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    for cache, expected in ((str(tmp_path / "cache"), str(tmp_path / "cache")), ("off", "None")):
        env["GFLOW_JAX_CACHE"] = cache
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == expected


def test_a_cache_folder_that_cannot_be_made_leaves_the_cache_off(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="compilation cache off: cannot make"):
        assert compilation.compilation_cache(str(blocker / "cache")) is None
