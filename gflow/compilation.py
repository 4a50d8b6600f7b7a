"""Compiling less: JAX's persistent compilation cache (a program compiled once is read back
from disk by the next process that needs it: the processes of `make paper`, the Dask
workers of a sweep), solves traced once and stored beside it ([`exported`][]: a later
process reads the program back instead of tracing it), and functions traced once however
often a program calls them."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import importlib.metadata
import os
import pickle
import sys
import warnings

import equinox as eqx
import jax
import numpy as np

from . import files


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
    `GFLOW_JAX_CACHE=off` leaves the cache off, and so does a folder that cannot be made
    (with a warning: JAX would warn at every program instead). Returns the folder (None: off).
    """
    path = path or os.environ.get("GFLOW_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gflow", "jax")
    if path == "off":
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        warnings.warn(f"compilation cache off: cannot make {path} ({e.strerror or e}); set GFLOW_JAX_CACHE to "
                      "a writable folder", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # small programs add up: cache all
    return path


def _default_cache(given: str | None) -> str | None:
    """On import: the cache of [`compilation_cache`][] for every use of gflow (a notebook, a
    script), not only its commands, unless JAX's cache folder was `given` already (by the
    user, or by `JAX_COMPILATION_CACHE_DIR`). JAX opens the folder at its first compilation,
    so this runs before any. Returns the folder in use."""
    return compilation_cache() if given is None else given


_default_cache(jax.config.jax_compilation_cache_dir)


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
    _PROGRAMS.clear()
    gc.collect()
    return True


EXPORTED = "gflow-exported"
"""Subfolder of the compilation cache holding traced programs ([`exported`][])."""

TRUSTED = ("gflow", "diffrax", "equinox", "optimistix", "lineax", "jax", "jaxlib", "numpy", "builtins")
"""Packages whose classes and functions may appear in a traced program's key: their code is
in the key already (gflow's source digest, the others' versions)."""


class Unportable(Exception):
    """A static argument that has no name valid in another process (a user's function)."""


def exported(fn):
    """`fn` (an `eqx.filter_jit` function) whose traced and lowered program is kept on disk
    beside the compilation cache, with `jax.export`, so that a later process skips Python
    tracing and lowering (~2 s of a warm `gflow run`) and only reads back the compiled
    program. The program run is the same StableHLO: its results equal `fn`'s bit for bit
    (tests/test_exported.py).

    The file is named by a digest of everything the trace depends on: gflow's source, the
    versions of JAX and the Equinox stack, the backend, XLA_FLAGS, the static arguments and
    the shapes and dtypes of the array ones. `fn` runs as it is when the compilation cache
    is off, when an argument is being traced, when a static argument has no portable
    name (an observable registered by the user), or when `jax.export` refused the program
    (kept on disk as `REFUSED`, so that later processes do not try again)."""

    def call(*args, **kwargs):
        folder = _exported_folder()
        dynamic, static = eqx.partition((args, kwargs), eqx.is_array)
        leaves = jax.tree.leaves(dynamic)
        if folder is None or any(isinstance(x, jax.core.Tracer) for x in leaves):
            return fn(*args, **kwargs)
        try:
            key = program_key(fn, static, leaves)
        except Unportable:
            return fn(*args, **kwargs)
        if key not in _PROGRAMS:
            stored = _load(folder, key)
            _PROGRAMS[key] = _export(fn, folder, key, dynamic, static) if stored is None else stored
        program = _PROGRAMS[key]
        if program is REFUSED:  # traced as it is (an error of fn's is raised here)
            return fn(*args, **kwargs)
        run, skeleton, tree = program
        outputs = iter(run(*leaves))
        return jax.tree.unflatten(tree, [next(outputs) if _is_slot(x) else x for x in skeleton])

    return functools.wraps(fn)(call)


_PROGRAMS: dict = {}
"""Programs read or exported by this process: key → [`_entry`][], or `REFUSED`."""

REFUSED = "refused"
"""What is stored, and kept, for a program that `jax.export` refused (or whose trace
raised): later processes trace it as it is without trying again, which cost a whole
extra trace each time (4 s for the arc-length clock's first phase, measured)."""

UNGUARANTEED_TARGETS = ("lapack_sormqr_ffi", "lapack_dormqr_ffi", "lapack_cunmqr_ffi", "lapack_zunmqr_ffi")
"""LAPACK kernels that `jax.export` will not serialize by default, having no guarantee that a
later jaxlib still has them (the Newton root find of an event solves by QR). A stored
program is only read back by the same versions of jax and jaxlib (they are in its key), so
that guarantee is not needed here."""


def _is_slot(x) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct)


def _entry(program: jax.export.Exported, skeleton):
    """(the program's compiled call, the skeleton's leaves, its structure): a stored
    program ready to run, its output rebuilt by putting the arrays into the slots."""
    flat, tree = jax.tree.flatten(skeleton, is_leaf=_is_slot)
    return jax.jit(program.call), flat, tree


def _exported_folder() -> str | None:
    cache = jax.config.jax_compilation_cache_dir
    return os.path.join(cache, EXPORTED) if cache else None


def _export(fn, folder: str, key: str, dynamic, static):
    """Trace and lower `fn` once with `jax.export`; write the program and the skeleton of its
    output (arrays as `ShapeDtypeStruct` slots) to `folder/key`, atomically. None when
    `jax.export` refuses it."""
    tree = jax.tree.structure(dynamic)
    box = {}

    def flat(*leaves):
        args, kwargs = eqx.combine(jax.tree.unflatten(tree, leaves), static)
        out_arrays, out_static = eqx.partition(fn(*args, **kwargs), eqx.is_array)
        box["skeleton"] = eqx.combine(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), out_arrays),
                                      out_static)
        return jax.tree.leaves(out_arrays)

    allow = [jax.export.DisabledSafetyCheck.custom_call(name) for name in UNGUARANTEED_TARGETS]
    try:
        program = jax.export.export(jax.jit(flat), disabled_checks=allow)(*jax.tree.leaves(dynamic))
        blob = pickle.dumps((bytes(program.serialize()), box["skeleton"]))
    except Exception:  # noqa: BLE001 (host callbacks, an unpicklable output, or fn's own error)
        program, blob = REFUSED, pickle.dumps((REFUSED, None))
    with contextlib.suppress(OSError):  # a read-only or full folder costs the next process a trace
        with files.atomic_path(os.path.join(folder, key)) as tmp, open(tmp, "wb") as f:
            f.write(blob)
    return REFUSED if program is REFUSED else _entry(program, box["skeleton"])


def _load(folder: str, key: str):
    """The program stored under `key`, `REFUSED`, or None when there is none or it cannot be
    read (a damaged file is traced anew and overwritten)."""
    try:
        with open(os.path.join(folder, key), "rb") as f:
            blob, skeleton = pickle.load(f)
        if blob == REFUSED:
            return REFUSED
        program = jax.export.deserialize(bytearray(blob))
    except Exception:  # noqa: BLE001 (missing, truncated, from another version: all mean "trace it")
        return None
    return _entry(program, skeleton)


def program_key(fn, static, leaves) -> str:
    """The digest naming `fn`'s program for these static arguments and array shapes."""
    parts = [
        f"{fn.__module__}.{fn.__qualname__}", _source_digest(), _versions(), jax.default_backend(),
        os.environ.get("XLA_FLAGS", ""), os.environ.get("EQX_ON_ERROR", ""), str(jax.config.jax_enable_x64),
        _describe(static),
        ";".join(f"{x.shape}{x.dtype}{'w' if getattr(x, 'weak_type', False) else ''}" for x in leaves),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _describe(x) -> str:
    """A text naming `x` the same way in every process; `Unportable` when there is none."""
    if x is None or isinstance(x, bool | int | float | complex | str | bytes):
        return f"{type(x).__name__}:{x!r}"
    if isinstance(x, tuple | list):
        return f"{type(x).__name__}[" + ",".join(_describe(v) for v in x) + "]"
    if isinstance(x, dict):
        return "dict{" + ",".join(f"{_describe(k)}:{_describe(v)}" for k, v in sorted(x.items(), key=repr)) + "}"
    if isinstance(x, np.dtype):
        return f"dtype:{x}"
    portable = getattr(x, "portable_name", None)
    if isinstance(portable, str):
        return portable
    if isinstance(x, type) or (callable(x) and not dataclasses.is_dataclass(x)):
        return _qualified(x)
    if dataclasses.is_dataclass(x):
        fields = ",".join(f"{f.name}={_describe(getattr(x, f.name, None))}" for f in dataclasses.fields(x))
        return f"{_qualified(type(x))}({fields})"
    raise Unportable(f"{type(x).__qualname__} has no portable name")


def _qualified(obj) -> str:
    """`module.qualname` of a class or function that the module itself defines, in a
    trusted package; functools.partial of one, with its arguments."""
    if isinstance(obj, functools.partial):
        return f"partial({_qualified(obj.func)},{_describe(obj.args)},{_describe(obj.keywords)})"
    module, name = getattr(obj, "__module__", None) or "", getattr(obj, "__qualname__", "")
    target = sys.modules.get(module)
    for part in name.split("."):
        target = getattr(target, part, None)
    if module.partition(".")[0] not in TRUSTED or "<" in name or target is not obj:
        raise Unportable(f"{module}.{name} is not a module-level name of {TRUSTED}")
    return f"{module}.{name}"


@functools.cache
def _source_digest() -> str:
    """Digest of every Python file of the gflow package."""
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for folder, dirs, names in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(f"{os.path.relpath(path, root)} {files.sha256(path)}\n".encode())
    return digest.hexdigest()


@functools.cache
def _versions() -> str:
    return " ".join(f"{p}={_version(p)}" for p in ("jax", "jaxlib", "diffrax", "equinox", "optimistix", "lineax",
                                                   "numpy")) + f" python={sys.version_info[:2]}"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"
