"""JAX's persistent compilation cache: a program compiled once is read back from disk by
the next process that needs it (the processes of `make paper`, the Dask workers of a
sweep), instead of being compiled again."""

from __future__ import annotations

import os

import jax


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
