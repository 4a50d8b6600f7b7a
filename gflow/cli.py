"""The `gflow` command.

    gflow run SCENARIO [--out DIR] [--overwrite] [--quiet]
    gflow check RUN_FOLDER
    gflow sweep SCENARIO [--out DIR] [--overwrite] [--quiet] [...]

Exit status: 0 success; 1 a theorem check violated; 2 bad input or damaged files
(scenario, data, weights, an output folder that exists or is in use, a damaged or
foreign file), with one line on stderr; 130 interrupted (Ctrl-C); 3 an internal error
(a bug: one line, `GFLOW_TRACEBACK=1` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings

EXIT_BAD_INPUT = 2
EXIT_VIOLATED = 1
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 3
INTERRUPTED = "interrupted; finished files are kept, nothing half-written was left behind"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gflow",
        description="Gradient flow (and descent) on deep linear networks, held against the theorems.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="integrate one scenario and write its run folder",
        description="Validate SCENARIO, integrate gradient flow (and GD if the scenario has a "
        "[descent] section), check the theorems and write a run folder: scenario.toml, "
        "trajectory.nc, summary.md, checks.md, checks.json and figures/*.png.",
    )
    run.add_argument("scenario", metavar="SCENARIO", help="a TOML scenario file (see scenarios/)")
    run.add_argument("--out", metavar="DIR", help="run folder to write (default: runs/<scenario name>)")
    run.add_argument("--overwrite", action="store_true", help="replace the run folder if it exists")
    run.add_argument("--quiet", action="store_true", help="print nothing but errors")

    check = sub.add_parser(
        "check",
        help="print and write the theorem checks of a finished run",
        description="Hold RUN_FOLDER's trajectory against the theorems; print a table and write "
        "checks.md and checks.json. Exit status 1 if a check is violated while its assumptions hold.",
    )
    check.add_argument("folder", metavar="RUN_FOLDER", help="a folder written by `gflow run`")

    sweep = sub.add_parser(
        "sweep",
        help="run a scenario's [sweep] grid",
        description="Expand SCENARIO's [sweep] table into a grid of runs, run them (resuming an "
        "interrupted sweep) and write one combined dataset, a table of final quantities and figures.",
    )
    sweep.add_argument("scenario", metavar="SCENARIO", help="a TOML scenario file with a [sweep] table")
    sweep.add_argument("--out", metavar="DIR", help="sweep folder (default: runs/<scenario name>)")
    sweep.add_argument("--overwrite", action="store_true", help="start afresh, replacing the folder")
    sweep.add_argument("--quiet", action="store_true", help="print nothing but errors")
    sweep.add_argument("--dask", metavar="ADDRESS", help="send chunks to this Dask scheduler")
    sweep.add_argument("--workers", type=int, metavar="N", help="start a local Dask cluster with N workers")
    return parser


def _fail(message: str, status: int = EXIT_BAD_INPUT) -> int:
    print(f"gflow: error: {message}", file=sys.stderr)
    return status


def _run(args) -> int:
    from . import experiment, theory
    from . import scenario as scen

    scenario = scen.load(args.scenario)  # read once: it also names the default folder
    out = args.out if args.out is not None else experiment.default_folder(scenario)
    result = experiment.execute(scenario, out, overwrite=args.overwrite, quiet=args.quiet)
    if not args.quiet:
        print(theory.format_table(result.checks))
        print(f"run folder: {result.folder}")
    return theory.exit_code(result.checks)


def _check(args) -> int:
    from . import files, theory, trajectory
    from . import scenario as scen

    path = os.path.join(args.folder, "trajectory.nc")
    if not os.path.isfile(path):
        return _fail(f"{args.folder}: no trajectory.nc here (is it a folder written by `gflow run`?)")
    ds = trajectory.load(path, expect="flow")
    gd_path = os.path.join(args.folder, "descent.nc")
    gd = trajectory.load(gd_path, expect="descent") if os.path.isfile(gd_path) else None  # every file read first
    problem = None
    source = os.path.join(args.folder, "scenario.toml")
    if os.path.isfile(source):
        problem = scen.load(source, base_dir=ds.attrs.get("scenario_dir") or None).validate_inputs()[0]
    checks = theory.check(ds, problem)
    if gd is not None:
        checks += theory.check(gd, problem)
    print(theory.format_table(checks))
    with files.folder_lock(args.folder):  # not while another gflow writes the folder
        files.clean_leftovers(args.folder)
        theory.write_report(checks, args.folder)
    return theory.exit_code(checks)


def _sweep(args) -> int:
    from . import experiment, sweep
    from . import scenario as scen

    scenario = scen.load(args.scenario)
    sweep.plan(scenario)  # bad input answers before a cluster starts
    out = args.out if args.out is not None else experiment.default_folder(scenario)
    if args.dask is not None and args.workers is not None:
        return _fail("give --dask ADDRESS or --workers N, not both")
    if args.workers is not None and args.workers < 1:
        return _fail(f"--workers must be at least 1; got {args.workers}")
    try:
        with sweep.client(dask=args.dask, workers=args.workers) as client:
            result = sweep.run(scenario, out, overwrite=args.overwrite, quiet=args.quiet, client=client)
    except sweep.DaskMissingError:
        return _fail("--dask/--workers need Dask: pip install 'gflow[dask]'")
    except KeyboardInterrupt:
        from .sweep.driver import chunk_running

        if not chunk_running():
            raise
        # Ctrl-C came while a chunk computed: its thread runs on inside XLA (nothing stops
        # it), and interpreter shutdown under it aborts the process. The folder is complete
        # (lock released, nothing half-written): say so and leave at once.
        _fail(INTERRUPTED, EXIT_INTERRUPTED)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    if not args.quiet:
        counts = result.runs.groupby(["step_size", "status"]).size().unstack(fill_value=0)
        print(counts.to_string())
        print(f"sweep folder: {result.folder}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)  # --help answers before the heavy imports

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.formatwarning = lambda message, *a, **k: f"gflow: warning: {message}\n"
    # importing gflow turns the compilation cache on (compilation._default_cache), here as in any script
    from .files import DamagedFileError, FolderInUseError, OutputExistsError
    from .models import ShapeError
    from .problem import DataError
    from .scenario import ScenarioError

    try:
        return {"run": _run, "check": _check, "sweep": _sweep}[args.command](args)
    except (ScenarioError, DataError, ShapeError, OutputExistsError, DamagedFileError, FolderInUseError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail(INTERRUPTED, EXIT_INTERRUPTED)
    except OSError as e:  # a folder that cannot be written, a full disk, …
        return _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
    except Exception as e:  # noqa: BLE001 (a bug: one line, not a traceback that reads like exit 1)
        if os.environ.get("GFLOW_TRACEBACK"):
            traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        return _fail(f"internal error, a bug in gflow ({type(e).__name__}: {first}); "
                     "GFLOW_TRACEBACK=1 shows where", EXIT_INTERNAL)


if __name__ == "__main__":
    sys.exit(main())
