"""Compiling less: JAX's persistent compilation cache (a program compiled once is read back
from disk by the next process that needs it: the processes of `make paper`, the Dask
workers of a sweep), and functions traced once however often a program calls them."""

from __future__ import annotations

import gc
import os

import equinox as eqx
import jax


def trace_once(fn):
    """`fn`, traced once per signature however often it is called while an enclosing
    program is traced, then inlined: the compiled program is the same, bit for bit. Diffrax
    calls a vector field 5 times, a save function 6 and an event condition 5 (shapes, first
    step, loop body, root find, end). Where these hold a Lanczos eigensolver, that is
    seconds of tracing."""
    return eqx.filter_jit(fn, inline=True)


def compilation_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache, so that every `gflow` command, the
    processes of `make paper` and the Dask workers compile each program once.

    The folder is `path`, else `$GFLOW_JAX_CACHE`, else ~/.cache/gflow/jax;
    `GFLOW_JAX_CACHE=off` leaves the cache off. Returns the folder (None: off).
    """
    path = path or os.environ.get("GFLOW_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gflow", "jax")
    if path == "off":
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # small programs add up: cache all
    return path


MAX_MAPPINGS = 30_000
"""Memory mappings a process may hold before [`release_if_crowded`][] clears JAX's caches."""


def release_if_crowded(limit: int = MAX_MAPPINGS) -> bool:
    """Clear JAX's in-memory caches of compiled programs when this process holds more than
    `limit` memory mappings; returns whether it did. Each compiled XLA:CPU program keeps its
    kernels mapped (~1,200 mappings for a GF solve with the default observables, measured),
    and a process that compiles a few dozen shapes reaches Linux's vm.max_map_count (65,530)
    and dies inside XLA (SIGABRT/SIGSEGV while compiling or serializing a program). Called
    where solves start; a program needed again is traced anew and read back from the
    persistent cache. A no-op where /proc/self/maps does not exist."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            count = sum(1 for _ in maps)
    except OSError:
        return False
    if count <= limit:
        return False
    jax.clear_caches()
    gc.collect()
    return True
