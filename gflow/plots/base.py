"""What every figure shares: a Figure made without pyplot, and an atomic PNG writer."""

from __future__ import annotations

import os

import math

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from ..files import atomic_path


MARGINS_INCHES = dict(left=0.85, right=0.2, bottom=0.6, top=0.55, between=0.75)
"""Fixed margins around the axes: room for tick labels, axis labels and a (sup)title.
A fixed layout draws each figure once; matplotlib's constrained layout measures every
tick label first and was three quarters of the time spent on figures."""


def new_figure(ncols: int = 1, width: float = 5.5, height: float = 4.0):
    """A Figure with `ncols` axes side by side (no pyplot: no global state, any backend)."""
    fig = Figure(figsize=(width * ncols, height))
    m, total = MARGINS_INCHES, width * ncols
    fig.subplots_adjust(left=m["left"] / total, right=1 - m["right"] / total, bottom=m["bottom"] / height,
                        top=1 - m["top"] / height, wspace=m["between"] / (width - m["between"]))
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def write_figures(figures: dict, folder: str | os.PathLike) -> list[str]:
    """Write each Figure of `{stem: Figure}` to `folder/stem.png` (atomically); their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = os.path.join(os.fspath(folder), f"{name}.png")
        _finish_axes(fig)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        paths.append(path)
    return paths


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
FEW_DECADES = 2.0
"""A log axis spanning at most this many decades keeps labelled minor ticks (1, 2, 5 × 10ᵏ)."""


def _log_label(value, mantissas=(1,)) -> str:
    """A log axis' tick label as plain text: 10⁻⁵ for a decade, else `%g` where the mantissa
    is one of `mantissas`. (Mathtext labels took a third of the time spent on figures.)"""
    if value <= 0 or not math.isfinite(value):
        return ""
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = value / 10.0**exponent
    if not any(abs(mantissa - m) < 1e-6 for m in mantissas):
        return ""
    if abs(mantissa - 1) < 1e-6 and exponent not in (0, 1):
        return "10" + str(exponent).translate(_SUPERSCRIPT)
    return f"{value:g}"


def _finish_axes(fig: Figure) -> None:
    """Before drawing: plain-text labels on log axes; minor ticks only where an axis spans
    few decades (over many decades they are slow to draw and left unlabelled anyway)."""
    for ax in fig.axes:
        for axis, scale, limits in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()), (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
            if scale != "log":
                continue
            axis.set_major_formatter(FuncFormatter(lambda v, _: _log_label(v)))
            low, high = sorted(limits)
            if low > 0 and math.log10(high / low) <= FEW_DECADES:
                axis.set_minor_formatter(FuncFormatter(lambda v, _: _log_label(v, (1, 2, 5))))
            else:
                axis.set_minor_locator(NullLocator())
