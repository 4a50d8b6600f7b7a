"""gflow: gradient flow on deep linear networks, held against the theorems.

float64 is switched on here, once, before any array is made: the theorems' checks
(conservation laws, excess risks of 1e-12) need it.
"""

import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"

from . import linalg, models, observables, problem, trajectory  # noqa: E402
from .flow import FlowOptions, solve  # noqa: E402
from .models import MLP, Residual, end_to_end  # noqa: E402
from .problem import Problem  # noqa: E402
from .trajectory import load, save  # noqa: E402


def run(scenario, out=None, *, overwrite: bool = False, quiet: bool = True):
    """Run a scenario file (or `Scenario`) and return its GF trajectory Dataset.

    With `out`, also write the run folder. See `gflow.experiment.execute` for the rest
    (GD runs, theorem checks, figures).
    """
    from .experiment import run as _run

    return _run(scenario, out, overwrite=overwrite, quiet=quiet)


def load_run(folder):
    """A run folder written by `gflow run`: `.flow` (Dataset), `.checks`, `.descent`, `.figures`."""
    from .experiment import load_run as _load_run

    return _load_run(folder)

__all__ = [
    "FlowOptions",
    "MLP",
    "Problem",
    "Residual",
    "end_to_end",
    "linalg",
    "load",
    "load_run",
    "models",
    "observables",
    "problem",
    "run",
    "save",
    "solve",
    "trajectory",
]
