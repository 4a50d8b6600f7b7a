"""One scenario, end to end: validate, integrate, check, and write a run folder.

A run folder holds `scenario.toml` (a copy), `trajectory.nc`, `summary.md`,
`checks.md`/`checks.json`, `figures/*.png`, and with a `[descent]` section `descent.nc`
and the GF-vs-GD figures; with `descent.central` or `descent.modified` also
`flows/<dynamics>-eta<η>.nc`, the trajectory of each finite-step flow beside GD. It is written in a temporary folder beside the target and
renamed into place at the end, so an interrupted run never leaves a half folder.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field, replace

import xarray as xr

from . import compare, files, flow, plots, theory, trajectory
from . import scenario as scen
from .files import OutputExistsError


FLOWS = "flows"
"""The run folder's subfolder of finite-step flow trajectories, one `<dynamics>-eta<η>.nc` each."""


class Progress:
    """Stage messages on stderr, with a ticking clock while a long stage runs (quiet: nothing)."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = None

    def __call__(self, message: str):
        self.done()
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def note(self, line: str):
        """A line of news from inside the running stage (the ticking clock goes on below it)."""
        if self.quiet:
            return
        print(f"\r  {line}", file=self.stream, flush=True)

    def stage(self, message: str):
        """Start a stage that may take a while; a tty sees the seconds go by."""
        self.done()
        if self.quiet:
            return
        start = time.perf_counter()
        if not self.stream.isatty():
            print(f"{message} …", file=self.stream, flush=True)
            return

        def tick():
            while not self._stop.wait(0.5):
                print(f"\r{message} … {time.perf_counter() - start:5.1f} s", end="", file=self.stream, flush=True)
            print(f"\r{message} … {time.perf_counter() - start:5.1f} s", file=self.stream, flush=True)

        self._stop.clear()
        self._thread = threading.Thread(target=tick, daemon=True)
        self._thread.start()

    def done(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


@dataclass
class RunResult:
    """What a run produced (the same things its folder holds)."""

    flow: xr.Dataset
    checks: list
    descent: xr.Dataset | None = None
    folder: str | None = None
    figures: list[str] = field(default_factory=list)
    flows: dict[str, xr.Dataset] = field(default_factory=dict)


def default_folder(scenario: scen.Scenario) -> str:
    return os.path.join("runs", scenario.name)


def execute(
    scenario: scen.Scenario | str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    quiet: bool = True,
) -> RunResult:
    """Run a scenario; write its run folder when `out` is given.

    Raises `ScenarioError` (bad scenario, data or weights) or `OutputExistsError` before
    anything is computed or written.
    """
    progress = Progress(quiet)
    if not isinstance(scenario, scen.Scenario):
        scenario = scen.load(scenario)
    if out is not None and os.path.exists(out) and not overwrite:
        raise OutputExistsError(f"{out}: the output folder exists (use --overwrite to replace it)")
    problem, model = scenario.validate_inputs()

    what = scenario.flow.dynamics.replace("_", " ") if scenario.flow.dynamics == "gradient_flow" \
        else f"the {scenario.flow.dynamics} flow at η = {scenario.flow.step_size:g}"
    progress.stage(f"{scenario.name}: integrating {what} (L = {model.depth}, {scenario.flow.solver})")
    ds = flow.solve(model, problem, scenario.flow.options(), scenario.record.observables, progress=progress.note)
    # the folder the scenario's relative data and weight paths were read from: `gflow check`
    # reads them from there again (the run folder holds a copy of the scenario, not the files)
    ds.attrs.update(scenario=scenario.name, seed=scenario.seed, scenario_dir=scenario.folder() or "")
    progress(
        f"{scenario.name}: {ds.attrs['status']} at t = {ds.attrs['t_final']:.3g} "
        f"in {ds.attrs['num_steps']} steps ({ds.attrs['wall_time_s']:.2f} s)"
    )

    gd, flows = None, {}
    if scenario.descent is not None:
        sec = scenario.descent
        beside = " with the " + " and ".join(n for n in compare.FINITE_STEP if getattr(sec, n)) + " flows" \
            if sec.central or sec.modified else ""
        progress.stage(f"{scenario.name}: gradient descent at {len(sec.step_sizes)} step sizes{beside}")
        gd, flows = compare.descent_for_scenario(scenario, problem, model)
    checks = theory.check(ds, problem)
    if gd is not None:
        checks += theory.check(gd, problem)
    for name, f in flows.items():
        checks += [replace(c, name=f"{c.name}[{name}]") for c in theory.check(f, problem)
                   if c.verdict != "not applicable"]
    progress.done()
    result = RunResult(flow=ds, checks=checks, descent=gd, flows=flows)
    if out is not None:
        progress.stage(f"{scenario.name}: writing {out}")
        result.folder, result.figures = _write_folder(result, scenario, problem, os.fspath(out), overwrite)
        progress(f"{scenario.name}: wrote {out}")
    return result


def run(scenario, out=None, *, overwrite: bool = False, quiet: bool = True) -> xr.Dataset:
    """Run a scenario and return its GF trajectory (see [`execute`][] for everything)."""
    return execute(scenario, out, overwrite=overwrite, quiet=quiet).flow


def load_run(folder: str | os.PathLike) -> RunResult:
    """A finished run folder, back in memory: `load_run(folder).flow`, `.checks`, `.descent`.

    Raises `FileNotFoundError` when `folder` holds no `trajectory.nc`, and
    `gflow.files.DamagedFileError` (a `ValueError`) naming the file when `trajectory.nc`,
    `descent.nc` or `checks.json` is damaged or not what `gflow run` writes.
    """
    folder = os.fspath(folder)
    path = os.path.join(folder, "trajectory.nc")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: no trajectory.nc here (is it a folder written by `gflow run`?)")
    flow_ds = trajectory.load(path, expect="flow")
    gd_path = os.path.join(folder, "descent.nc")
    gd = trajectory.load(gd_path, expect="descent") if os.path.isfile(gd_path) else None
    flows_dir = os.path.join(folder, FLOWS)
    flows = {name[:-3]: trajectory.load(os.path.join(flows_dir, name), expect="flow")
             for name in sorted(os.listdir(flows_dir)) if name.endswith(".nc")} if os.path.isdir(flows_dir) else {}
    checks = []
    if os.path.isfile(os.path.join(folder, "checks.json")):
        try:
            checks = theory.read_report(folder)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise files.DamagedFileError(os.path.join(folder, "checks.json"),
                                         f"damaged or not a gflow checks report ({type(e).__name__}: {e})") from None
    figures = sorted(os.path.join(folder, "figures", f) for f in os.listdir(os.path.join(folder, "figures"))) \
        if os.path.isdir(os.path.join(folder, "figures")) else []
    return RunResult(flow=flow_ds, checks=checks, descent=gd, folder=folder, figures=figures, flows=flows)


def _write_folder(result: RunResult, scenario: scen.Scenario, problem, out: str, overwrite: bool = False):
    """Build the run folder beside `out` and swap it in, holding `out`'s lock (what killed
    runs left there is cleaned up first; a folder that appeared meanwhile is refused
    unless `overwrite`)."""
    with files.folder_lock(out):
        files.clean_leftovers(out)
        if os.path.lexists(out) and not overwrite:
            raise OutputExistsError(f"{out}: the output folder exists (use --overwrite to replace it)")
        return _build_folder(result, scenario, out)


def _build_folder(result: RunResult, scenario: scen.Scenario, out: str):
    tmp = files.temp_folder(out)
    try:
        if scenario.source is not None:
            shutil.copyfile(scenario.source, os.path.join(tmp, "scenario.toml"))
        trajectory.save(result.flow, os.path.join(tmp, "trajectory.nc"))
        if result.descent is not None:
            trajectory.save(result.descent, os.path.join(tmp, "descent.nc"))
        for name, f in result.flows.items():
            os.makedirs(os.path.join(tmp, FLOWS), exist_ok=True)
            trajectory.save(f, os.path.join(tmp, FLOWS, f"{name}.nc"))
        theory.write_report(result.checks, tmp)
        with open(os.path.join(tmp, "summary.md"), "w") as f:
            f.write(summary(result.flow, result.checks, result.descent, result.flows))
        files.pause_point("run-figures")
        figures = plots.save_figures(result.flow, os.path.join(tmp, "figures"))
        if result.descent is not None:
                figures += compare.save_figures(result.flow, result.descent, os.path.join(tmp, "figures"), result.flows)
        files.replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    figures = [os.path.join(out, os.path.relpath(p, tmp)) for p in figures]
    return out, figures


def _sharpness_rows(ds: xr.Dataset, checks: list, b: dict) -> list[tuple[str, str]]:
    """S_final (as the checks computed it, else as recorded) beside the bracket of S_min."""
    judged = [c for c in checks if c.name == "sharpness_lower_bound" and c.observed is not None]
    if judged:
        s_final, how = judged[0].observed, "recomputed at the final weights"
    elif "sharpness" in ds:
        s_final, how = float(ds.sharpness[-1]), "recorded (Lanczos)"
    else:
        return []
    if ds.attrs.get("activation", "linear") != "linear":  # no bound: 2La is a reference value (theory.md §10)
        return [(f"S_final ({how})", f"{s_final:.6g}"), ("2La (reference only: the network has an activation)",
                f"{b['S_lower']:.6g}"), ("S_final / 2La", f"{s_final / b['S_lower']:.4f}")]
    rows = [(f"S_final ({how})", f"{s_final:.6g}"), ("S_lower = 2cLa (lower bound on S_min)", f"{b['S_lower']:.6g}")]
    if "S_balanced" in b:
        rows.append(("S_balanced (upper bound on S_min)", f"{b['S_balanced']:.6g}"))
    rows += [("S_upper (upper bound on S_min, not on S_final)", f"{b['S_upper']:.6g}"),
             ("S_final / S_lower", f"{s_final / b['S_lower']:.4f}")]
    if "S_balanced" in b:
        rows.append(("S_final / S_balanced", f"{s_final / b['S_balanced']:.4f}"))
    return rows


def _stop_rule(ds: xr.Dataset) -> tuple[str, str]:
    """What "converged" means for this run: R − R_min below a tolerance, or ‖∇R‖² for a
    network with an activation (its R_min is unknown)."""
    a = ds.attrs
    if a.get("activation", "linear") == "linear":
        return "stop rule", f"R − R_min < {a.get('flow_stop_at_excess_risk', float('nan')):.3g}"
    return "stop rule", (f"‖∇R‖² < {a.get('flow_stop_at_grad_norm_sq', float('nan')):.3g} "
                         f"(R_min of a {a['activation']} network is unknown)")


def summary(ds: xr.Dataset, checks: list, gd: xr.Dataset | None = None, flows: dict | None = None) -> str:
    """The run's headline numbers as Markdown."""
    a = ds.attrs
    b = theory.bounds_from_dataset(ds)
    rows = [
        ("status", a["status"]),
        ("clock", a.get("clock", "plain")),
        ("t_final", f"{a['t_final']:.6g}"),
        ("solver steps (accepted / rejected)", f"{a['num_accepted_steps']} / {a['num_rejected_steps']}"),
        ("wall time (s, compile included)", f"{a['wall_time_s']:.3f}"),
    ]
    rows.append(_stop_rule(ds))
    if a.get("stiffness"):
        rows.append(("stiffness", a["stiffness"]))
    if "excess_risk" in ds:
        rows.append(("final excess risk R − R_min", f"{float(ds.excess_risk[-1]):.3e}"))
    elif "risk" in ds:
        rows.append(("final risk R", f"{float(ds.risk[-1]):.3e}"))
    if "grad_norm_sq" in ds and a.get("activation", "linear") != "linear":
        rows.append(("final ‖∇R‖²", f"{float(ds.grad_norm_sq[-1]):.3e}"))
    if "distance_to_pi_star" in ds:
        rows.append(("final ‖w − π*‖", f"{float(ds.distance_to_pi_star[-1]):.3e}"))
    rows += _sharpness_rows(ds, checks, b)
    if "balance_drift" in ds and ds.sizes["interface"] > 0:
        rows.append(("max conserved-quantity drift", f"{float(ds.balance_drift.max()):.3e}"))
    lines = [f"# {a.get('scenario', 'run')}", "", "| quantity | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "## Problem", "", "| constant | value |", "| --- | --- |"]
    lines += [f"| {k} | {a[k]:.6g} |" for k in ("n", "d", "lam", "Lam", "a", "pi_star_norm", "R_min")]
    lines += [f"| depth L | {a['depth']} |", f"| widths | {a['widths']} |", f"| kind | {a['kind']} |",
              f"| activation | {a.get('activation', 'linear')} |"]
    if gd is not None:
        lines += ["", "## Gradient descent", "", compare.summary_table(gd, flows)]
    verdicts = {}
    for c in checks:
        verdicts[c.verdict] = verdicts.get(c.verdict, 0) + 1
    lines += ["", "## Theorem checks", "", ", ".join(f"{v}: {n}" for v, n in sorted(verdicts.items())),
              "", "Details in checks.md."]
    return "\n".join(lines) + "\n"
