"""What every figure shares: a Figure made without pyplot, and an atomic PNG writer."""

from __future__ import annotations

import os

from matplotlib.figure import Figure

from ..files import atomic_path


def new_figure(ncols: int = 1, width: float = 5.5, height: float = 4.0):
    """A Figure with `ncols` axes side by side (no pyplot: no global state, any backend)."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def write_figures(figures: dict, folder: str | os.PathLike) -> list[str]:
    """Write each Figure of `{stem: Figure}` to `folder/stem.png` (atomically); their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = os.path.join(os.fspath(folder), f"{name}.png")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        paths.append(path)
    return paths
