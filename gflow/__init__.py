"""gflow: gradient flow on deep linear networks, held against the theorems.

float64 is switched on here, once, before any array is made: the theorems' checks
(conservation laws, excess risks of 1e-12) need it. When JAX is not imported yet this
costs nothing: JAX reads `JAX_ENABLE_X64` when it is first imported. Submodules and the
names below are imported on first use, so `gflow --help` answers without loading JAX.

Unless `EQX_ON_ERROR` is set, Equinox's runtime checks inside compiled solves turn a
failure into NaN (which gflow records as the status "non_finite") instead of a host
callback: programs with host callbacks cannot go to JAX's persistent compilation cache.
"""

import importlib
import os
import sys

if "jax" in sys.modules:
    sys.modules["jax"].config.update("jax_enable_x64", True)
else:
    os.environ["JAX_ENABLE_X64"] = "1"
os.environ.setdefault("EQX_ON_ERROR", "nan")  # read by Equinox when it is first imported

__version__ = "0.1.0"

_SUBMODULES = (
    "compare", "descent", "experiment", "files", "flow", "linalg", "models", "observables", "plots",
    "problem", "scenario", "solver", "sweep", "theory", "trajectory",
)
_NAMES = {
    "execute": "experiment", "load_run": "experiment", "run": "experiment",
    "FlowOptions": "flow", "solve": "flow",
    "MLP": "models", "Residual": "models", "end_to_end": "models",
    "Problem": "problem",
    "load": "trajectory", "save": "trajectory",
}

__all__ = sorted([*_SUBMODULES, *_NAMES])


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'gflow' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
