"""Long solves: a plain-time solve runs in segments of at most `SEGMENT_STEPS` solver steps
(all of one length, [`segment_steps`][]), so that between segments it can say how far it
got and whether the flow is stiff.

A solve that ends within its first segment is one Diffrax call, exactly as without
segments. A longer one restarts each segment from the state reached, with the last accepted
step as the first step of the next: the same tolerances, a slightly different sequence of
steps (results agree to the solver's tolerance, not bitwise, with an unsegmented solve).

Stiffness (theory.md §6): an explicit Runge–Kutta method is stable on the gradient
flow near W only for steps h with h·S(W) below a constant of order 3 (S the sharpness), so
when the controller's steps sit at h·S ≳ `STIFF_PRODUCT` they are held by stability, not
accuracy, and a flow with large S needs ~t_max·S/3 steps. The watch says so once, with what
to do about it (a solver for stiff flows, `solver.STIFF_SOLVERS`, whose solves are not
judged), in the progress and in the Dataset's attrs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import numpy as np

from . import solver
from .theory.curvature import sharpness

SEGMENT_STEPS = 2048
"""Solver steps per segment of a plain-time solve, at most (a paper-size solve needs a few
hundred); see [`segment_steps`][]."""


def segment_steps(max_steps: int) -> int:
    """Steps per segment of a solve capped at `max_steps`: the largest divisor of `max_steps`
    from `SEGMENT_STEPS`/2 to `SEGMENT_STEPS` (2000 for the default 100,000), so that every
    segment runs one compiled program (the step cap is static: a shorter last segment would
    compile a second, seconds at the end of a solve that reaches its cap); `SEGMENT_STEPS`
    when there is none."""
    if max_steps <= SEGMENT_STEPS:
        return max_steps
    return next((s for s in range(SEGMENT_STEPS, SEGMENT_STEPS // 2 - 1, -1) if max_steps % s == 0), SEGMENT_STEPS)

STIFF_PRODUCT = 1.0
"""h·S at or above which a step of an explicit solver is judged held by stability."""

JUDGE_AFTER_S = 10.0
"""Stiffness is judged only once a solve has run this long (wall seconds): the judgement
costs a sharpness evaluation (and its compilation), and only a long solve needs it."""

class Watch:
    """Reports a long solve's progress to `report` (a callable taking one line; None: silent)
    and judges its stiffness once."""

    def __init__(self, report: Callable[[str], None] | None, solver_name: str, t_max: float, max_steps: int):
        self.report = report or (lambda line: None)
        self.solver_name, self.t_max, self.max_steps = solver_name, t_max, max_steps
        self.start = time.perf_counter()
        self.note = ""

    def segment_done(self, t: float, steps: int, dt: float, model, problem) -> None:
        """After a segment that ran out of steps: one progress line, and the stiffness
        judgement the first time (it costs one sharpness evaluation)."""
        wall = time.perf_counter() - self.start
        self.report(f"t = {t:.4g} of {self.t_max:.4g}, {steps} steps, step size {dt:.2e}, {wall:.0f} s")
        if self.note or self.solver_name in solver.STIFF_SOLVERS or not dt > 0 or wall < JUDGE_AFTER_S:
            return
        S = sharpness(model, problem)
        needed = steps + (self.t_max - t) / dt
        if dt * S >= STIFF_PRODUCT and needed > self.max_steps:
            self.note = (
                f"stiff: steps of {dt:.1e} are held near {self.solver_name}'s stability limit (sharpness S = {S:.2e}, "
                f"h·S = {dt * S:.1f}); at this pace t_max = {self.t_max:g} is {needed:.0e} steps away and max_steps is "
                f"{self.max_steps}. Unless the flow converges first, use a solver for stiff flows: flow.solver = "
                f"\"rkc2\" (explicit, its stages grow like √(h·S); gradient and modified flows), or "
                f"\"kvaerno5\" (implicit, a dense Jacobian per step: small networks); or a shorter t_max."
            )
            self.report(self.note)


def solve_in_segments(integrate: Callable, y0, t_start: float, options, watch: Watch, static, problem):
    """Run `integrate(y, t0, numerics)` (a Diffrax solve over [t0, t_max] saving on the
    grid clipped to [t0, t_max], see `gflow.solver.save_points`) segment after segment,
    until it ends for another reason than the segment's step cap or the solve's own
    `max_steps` is spent.

    Returns (times, saved, final state, Diffrax result, step counts, step times, segments):
    the grid saves of all segments in order, the end of the last, and (start time, end time,
    Diffrax solution) of each segment.
    """
    full = solver.numerics(options)
    per_segment = segment_steps(full.max_steps)
    pieces, step_times, stats = [], [], dict(num_steps=0, num_accepted_steps=0, num_rejected_steps=0)
    segments = []
    y, t0 = y0, t_start
    while True:
        numerics = dataclasses.replace(full, max_steps=min(per_segment, full.max_steps - stats["num_steps"]))
        # each segment picks its first step as the first does: passing the last step instead
        # would compile a second program for every solve longer than a segment
        sol = integrate(y, t0, numerics)
        times, saved = solver.trim(np.asarray(sol.ts[0]), jax.tree.map(np.asarray, sol.ys[0]))
        ends = np.asarray(sol.ts[2])
        step_times.append(ends[np.isfinite(ends)])
        stats = {k: stats[k] + v for k, v in solver.stats(sol).items()}
        y = jax.tree.map(lambda x: x[0], sol.ys[1])
        t_end = solver.end_time(sol)
        segments.append((t0, t_end, sol))
        last = not (sol.result == diffrax.RESULTS.max_steps_reached and stats["num_steps"] < full.max_steps
                    and math.isfinite(t_end) and step_times[-1].size > 1)
        keep = (times > t0 if pieces else np.ones_like(times, bool)) & ((times < t_end) | last)
        pieces.append((times[keep], jax.tree.map(lambda v: v[keep], saved)))
        if last:
            break
        last_step = float(step_times[-1][-1] - step_times[-1][-2])
        watch.segment_done(t_end, stats["num_steps"], last_step, eqx.combine(y[0], static), problem)
        t0 = t_end
    times = np.concatenate([p[0] for p in pieces])
    saved = jax.tree.map(lambda *v: np.concatenate(v), *[p[1] for p in pieces])
    return times, saved, y, sol.result, stats, np.concatenate(step_times), segments
