"""matplotlib figures, made without pyplot (no global state, any backend).

- `base`: [`new_figure`][], [`write_figures`][] (atomic PNG files), shared by every figure.
- `flow`: figures of one gradient-flow run, each observable next to its theoretical line;
  [`save_figures`][] writes those whose observables were recorded.
- `descent`: gradient descent beside gradient flow (`gflow.plots.descent.save_figures`).
"""

from . import descent, flow
from .base import new_figure, write_figures
from .flow import (
    FIGURES,
    alignment,
    conservation,
    panels,
    pl,
    rank_one_gap,
    risk,
    save_figures,
    sharpness,
    singular_values,
)

__all__ = [
    "FIGURES",
    "alignment",
    "conservation",
    "descent",
    "flow",
    "new_figure",
    "panels",
    "pl",
    "rank_one_gap",
    "risk",
    "save_figures",
    "sharpness",
    "singular_values",
    "write_figures",
]
