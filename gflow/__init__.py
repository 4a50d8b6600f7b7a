"""gflow: gradient flow on deep linear networks, held against the theorems.

float64 is switched on here, once, before any array is made: the theorems' checks
(conservation laws, excess risks of 1e-12) need it.
"""

import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"

from . import (  # noqa: E402
    compare,
    descent,
    experiment,
    linalg,
    models,
    observables,
    plots,
    problem,
    scenario,
    theory,
    trajectory,
)
from .experiment import execute, load_run, run  # noqa: E402
from .flow import FlowOptions, solve  # noqa: E402
from .models import MLP, Residual, end_to_end  # noqa: E402
from .problem import Problem  # noqa: E402
from .trajectory import load, save  # noqa: E402

__all__ = [
    "FlowOptions",
    "MLP",
    "Problem",
    "Residual",
    "compare",
    "descent",
    "end_to_end",
    "execute",
    "experiment",
    "linalg",
    "load",
    "load_run",
    "models",
    "observables",
    "plots",
    "problem",
    "run",
    "save",
    "scenario",
    "solve",
    "theory",
    "trajectory",
]
