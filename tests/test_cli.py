"""The `gflow` command end to end: run folders, checks, and bad input (exit 2, one line)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gflow import cli, trajectory

from .test_scenario import SMALL, write


def gflow_cmd(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "gflow", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.mark.slow
def test_run_writes_a_complete_folder(tmp_path):
    scenario = write(tmp_path, SMALL.replace("[flow]", '[record]\nobservables = ["risk", "excess_risk", '
                     '"grad_norm_sq", "pl_ratio", "pl_lower_bound", "sharpness", "singular_values", '
                     '"rank_one_gap", "alignment", "balance_drift", "distance_to_pi_star"]\n[flow]'))
    out = tmp_path / "run"
    proc = gflow_cmd("run", scenario, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "run folder" in proc.stdout and "converged" in proc.stderr
    for name in ("scenario.toml", "trajectory.nc", "summary.md", "checks.md", "checks.json"):
        assert (out / name).is_file(), name
    for fig in ("risk", "sharpness", "pl_ratio", "singular_values", "alignment", "rank_one_gap", "conservation"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 5000, fig
    ds = trajectory.load(out / "trajectory.nc")
    assert ds.attrs["status"] == "converged"
    s_lower = 2 * ds.attrs["depth"] * ds.attrs["a"]  # ‖π*‖ = 1, p = 1
    assert float(ds.sharpness[-1]) >= s_lower * (1 - 1e-6)
    summary = (out / "summary.md").read_text()
    assert "S_final / S_lower" in summary and "converged" in summary
    checks = json.loads((out / "checks.json").read_text())["checks"]
    assert checks and all(c["verdict"] != "violated" for c in checks)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary leftovers

    again = gflow_cmd("run", scenario, "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr and "--overwrite" in again.stderr
    quiet = gflow_cmd("run", scenario, "--out", str(out), "--overwrite", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""

    check = gflow_cmd("check", str(out))
    assert check.returncode == 0 and "holds" in check.stdout


def test_help_describes_every_option():
    top = gflow_cmd("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in ("run", "check", "sweep"))
    run = gflow_cmd("run", "--help")
    assert all(opt in run.stdout for opt in ("SCENARIO", "--out", "--overwrite", "--quiet"))


def _bad(tmp_path, capsys, *args):
    out = tmp_path / "out"
    status = cli.main(["run", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("gflow: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not out.exists()
    return err


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ('name = "tiny"\n', "", "name: missing required key"),
        ("depth = 3", "depth = 3\ndepht = 3", "model.depht: unknown key"),
        ("depth = 3", "depth = 3.5", "model.depth"),
        ("depth = 3", "depth = -1", "model.depth"),
        ("width = 3", "width = 0", "model.width"),
        ("n = 20", "n = -5", "data.n"),
        ("t_max = 1e3", "t_max = 1e3\nrtol = -1.0", "flow.rtol"),
        ("t_max = 1e3", "t_max = 1e3\natol = 0", "flow.atol"),
        ("t_max = 1e3", 't_max = 1e3\nsolver = "euler"', "flow.solver"),
        ("[flow]", '[record]\nobservables = ["hessian_trace"]\n[flow]', "record.observables"),
        ("t_max = 1e3", "t_max = 1e3\nt_first = 1e4", "flow: t_first"),
    ],
)
def test_bad_scenarios_exit_2_with_one_line(tmp_path, capsys, old, new, expected):
    path = write(tmp_path, SMALL.replace(old, new, 1))
    err = _bad(tmp_path, capsys, path)
    assert path in err and expected in err


def test_bad_files_exit_2(tmp_path, capsys):
    assert "no such file" in _bad(tmp_path, capsys, str(tmp_path / "missing.toml"))
    assert "not a valid TOML" in _bad(tmp_path, capsys, write(tmp_path, "name = = 3"))
    file_data = SMALL.replace('kind = "gaussian"\nn = 20\nd = 3', 'kind = "file"\npath = "d.npz"')
    path = write(tmp_path, file_data)
    assert "does not exist" in _bad(tmp_path, capsys, path)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 3))
    X[0, 0] = np.inf
    np.savez(tmp_path / "d.npz", X=X, y=rng.standard_normal(20))
    assert "NaN or infinite" in _bad(tmp_path, capsys, path)
    np.savez(tmp_path / "d.npz", X=rng.standard_normal((20, 3)), y=rng.standard_normal(21))
    assert "shape" in _bad(tmp_path, capsys, path)
    weights = SMALL.replace("depth = 3\nwidth = 3\n", "").replace(
        'init = { kind = "small_scale", scale = 0.5 }', 'init = { kind = "file", path = "w.npz" }'
    )
    np.savez(tmp_path / "w.npz", W1=np.ones((3, 4)), W2=np.ones((1, 3)))
    assert "inputs of size 4" in _bad(tmp_path, capsys, write(tmp_path, weights))


@pytest.mark.slow
def test_check_reads_relative_data_and_weights_from_the_scenarios_folder(tmp_path, monkeypatch):
    """A run folder holds a copy of the scenario, not its files: `gflow check` reads relative
    data and weight paths from the original scenario's folder (recorded in trajectory.nc),
    from any working directory, and finds what `gflow run` found."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    np.savez(inputs / "d.npz", X=rng.standard_normal((20, 3)), y=rng.standard_normal(20))
    np.savez(inputs / "w.npz", W1=0.5 * rng.standard_normal((3, 3)), W2=0.5 * rng.standard_normal((3, 3)),
             W3=0.5 * rng.standard_normal((1, 3)))
    text = SMALL.replace('kind = "gaussian"\nn = 20\nd = 3', 'kind = "file"\npath = "d.npz"').replace(
        "depth = 3\nwidth = 3\n", "").replace('init = { kind = "small_scale", scale = 0.5 }',
                                               'init = { kind = "file", path = "w.npz" }')
    out = tmp_path / "runs" / "r"
    assert cli.main(["run", write(inputs, text), "--out", str(out), "--quiet"]) == 0
    ran = json.loads((out / "checks.json").read_text())["checks"]
    assert trajectory.load(out / "trajectory.nc").attrs["scenario_dir"] == str(inputs)
    monkeypatch.chdir(tmp_path / "runs")
    assert cli.main(["check", "r"]) == 0
    checked = json.loads((out / "checks.json").read_text())["checks"]
    assert [(c["name"], c["verdict"]) for c in checked] == [(c["name"], c["verdict"]) for c in ran]


def test_existing_output_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    status = cli.main(["run", write(tmp_path, SMALL), "--out", str(out)])
    assert status == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_check_on_a_folder_without_a_run(tmp_path, capsys):
    assert cli.main(["check", str(tmp_path)]) == 2
    assert "no trajectory.nc" in capsys.readouterr().err
