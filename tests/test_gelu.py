"""GELU networks held against an independent implementation: a NumPy forward pass and
hand-written backpropagation, integrated by SciPy's DOP853, a finite-difference Hessian for
the sharpness, and a plain Python loop for GD. Nothing here calls gflow's own risk,
gradient or Hessian to make a reference."""

import math

import jax
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.special import erf

import gflow
from gflow import cli, descent, models, observables as obs, problem, scenario, sweep

WIDTHS = (3, 4, 3, 1)
FLOW = dict(rtol=1e-10, atol=1e-12, t_max=1e5, saves=12, stop_at_grad_norm_sq=1e-9)


# --- the reference: NumPy only ----------------------------------------------------------------


def gelu(x, exact=False):
    if exact:
        return 0.5 * x * (1 + erf(x / math.sqrt(2)))
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_prime(x, exact=False):
    if exact:
        return 0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-(x**2) / 2) / math.sqrt(2 * math.pi)
    c = math.sqrt(2 / math.pi)
    t = np.tanh(c * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t**2) * c * (1 + 3 * 0.044715 * x**2)


def forward(Ws, X, exact=False):
    """(hidden activations, pre-activations, outputs) of x ↦ W_L σ(⋯σ(W_1 x))."""
    hs, zs = [X], []
    for W in Ws[:-1]:
        zs.append(hs[-1] @ W.T)
        hs.append(gelu(zs[-1], exact))
    return hs, zs, (hs[-1] @ Ws[-1].T)[:, 0]


def gradient(Ws, X, y, exact=False):
    """∂R/∂W_k of R = (1/n)‖y − f(X)‖², by backpropagation."""
    hs, zs, f = forward(Ws, X, exact)
    delta = (2.0 / len(y)) * (f - y)[:, None]
    grads = [None] * len(Ws)
    grads[-1] = delta.T @ hs[-1]
    for k in reversed(range(len(Ws) - 1)):
        delta = (delta @ Ws[k + 1]) * gelu_prime(zs[k], exact)
        grads[k] = delta.T @ hs[k]
    return grads


def shapes_of(widths):
    return [(o, i) for i, o in zip(widths[:-1], widths[1:])]


def unflat(x, widths):
    out, i = [], 0
    for o, n in shapes_of(widths):
        out.append(x[i : i + o * n].reshape(o, n))
        i += o * n
    return out


def flat_gradient(x, widths, X, y):
    return np.concatenate([g.ravel() for g in gradient(unflat(x, widths), X, y)])


def sharpness(x, widths, X, y, h=1e-5):
    """Top eigenvalue of a central-difference Hessian of the hand-written gradient."""
    P = x.size
    H = np.empty((P, P))
    for j in range(P):
        e = np.zeros(P)
        e[j] = h
        H[:, j] = (flat_gradient(x + e, widths, X, y) - flat_gradient(x - e, widths, X, y)) / (2 * h)
    return np.linalg.eigvalsh((H + H.T) / 2)[-1]


# --- a GELU run, from files, through a scenario ---------------------------------------------


def teacher_data(rng, n):
    """Inputs, and targets from a GELU teacher of the same widths (so a student can fit them)."""
    teacher = [np.asarray(w) for w in models.mlp(jax.random.key(3), WIDTHS, 1.0, "gelu").layers()]
    X = rng.standard_normal((n, WIDTHS[0]))
    return teacher, X, forward(teacher, X)[2]


SCENARIO = """
name = "gelu_test"
[data]
kind = "file"
path = "data.npz"
[model]
kind = "mlp"
activation = "gelu"
init = {{ kind = "file", path = "w.npz" }}
[flow]
{flow}
[record]
observables = ["risk", "test_risk", "grad_norm_sq", "sharpness", "outputs", "weight_norms", "alignment"]
[descent]
step_sizes = [0.5, 40.0]
steps = 300
observables = ["risk", "grad_norm_sq"]
"""


@pytest.fixture(scope="module")
def gelu_run(tmp_path_factory):
    """`gflow run` of a GELU student started near its teacher (weights and data from files)."""
    folder = tmp_path_factory.mktemp("gelu")
    rng = np.random.default_rng(0)
    teacher, X, y = teacher_data(rng, 40)
    _, X_test, y_test = teacher_data(rng, 10)
    np.savez(folder / "data.npz", X=X, y=y, X_test=X_test, y_test=y_test)
    start = [w + 0.2 * rng.standard_normal(w.shape) for w in teacher]
    np.savez(folder / "w.npz", **{f"W{k + 1}": w for k, w in enumerate(start)})
    flow = "\n".join(f"{k} = {v!r}" for k, v in FLOW.items())
    (folder / "s.toml").write_text(SCENARIO.format(flow=flow))
    result = gflow.execute(str(folder / "s.toml"), str(folder / "run"))
    return result, dict(X=X, y=y, X_test=X_test, y_test=y_test, start=start, folder=folder)


def test_gelu_outputs_match_numpy_for_mixed_widths_and_both_gelus():
    X = np.random.default_rng(1).standard_normal((7, 4))
    for widths, activation, exact in (((4, 6, 6, 6, 2, 1), "gelu", False), ((4, 6, 6, 6, 2, 1), "gelu_exact", True),
                                      ((4, 3, 1, 1, 1), "gelu", False)):
        net = models.mlp(jax.random.key(2), widths, 0.9, activation)
        ref = forward([np.asarray(w) for w in net.layers()], X, exact)[2]
        np.testing.assert_allclose(models.outputs(net, X), ref, rtol=1e-13, atol=1e-15)


def test_gelu_flow_matches_dop853_in_outputs_and_sharpness(gelu_run):
    result, data = gelu_run
    ds = result.flow
    assert ds.attrs["status"] == "converged" and ds.attrs["activation"] == "gelu"
    times = ds.time.values
    keep = np.concatenate([[True], np.diff(times) > 0])
    times = times[keep]
    x0 = np.concatenate([w.ravel() for w in data["start"]])
    X, y = data["X"], data["y"]
    ref = solve_ivp(lambda t, x: -flat_gradient(x, WIDTHS, X, y), (0.0, times[-1]), x0, method="DOP853",
                    rtol=1e-12, atol=1e-14, t_eval=times)
    assert ref.success
    outputs = np.array([forward(unflat(x, WIDTHS), X)[2] for x in ref.y.T])
    np.testing.assert_allclose(ds.outputs.values[keep], outputs, atol=1e-6, rtol=0)
    for i in np.linspace(1, times.size - 1, 4).astype(int):  # several times, the end included
        S = sharpness(ref.y[:, i], WIDTHS, X, y)
        assert abs(float(ds.sharpness.values[keep][i]) - S) <= 1e-6 * max(1.0, abs(S))
    w_end = unflat(ref.y[:, -1], WIDTHS)
    g = np.sum([np.sum(gi**2) for gi in gradient(w_end, X, y)])
    assert float(ds.grad_norm_sq[-1]) == pytest.approx(g, rel=1e-4) and g < FLOW["stop_at_grad_norm_sq"] * 1.01
    test = np.mean((data["y_test"] - forward(w_end, data["X_test"])[2]) ** 2)
    assert float(ds.test_risk[-1]) == pytest.approx(test, rel=1e-6)


def test_gelu_gd_matches_a_plain_loop_and_converges_on_the_gradient():
    rng = np.random.default_rng(4)
    teacher, X, y = teacher_data(rng, 30)
    start = [w + 0.3 * rng.standard_normal(w.shape) for w in teacher]
    prob = problem.Problem.from_data(X, y)
    net = models.from_layers(start, activation="gelu")
    eta, steps, tol = 0.4, 120, 1e-4
    ds = descent.run(net, prob, [eta, 60.0], steps, record_every=40, tol=tol)
    Ws, risks = [w.copy() for w in start], []
    for k in range(steps + 1):
        if k % 40 == 0:
            risks.append(np.mean((y - forward(Ws, X)[2]) ** 2))
        if k < steps:
            Ws = [w - eta * g for w, g in zip(Ws, gradient(Ws, X, y))]
    np.testing.assert_allclose(ds.risk.values[0, 0], risks, rtol=1e-10)
    for a, b in zip(descent.model_from(ds, eta).layers(), Ws):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    g2 = sum(np.sum(g**2) for g in gradient(Ws, X, y))
    assert float(ds.final_grad_norm_sq.sel(step_size=eta)[0]) == pytest.approx(g2, rel=1e-8)
    assert str(ds.status.sel(step_size=eta).values[0]) == ("converged" if g2 <= tol else "stalled")
    assert "final_excess_risk" not in ds and "final_distance_to_pi_star" not in ds
    assert set(np.asarray(ds.status.values).ravel()) <= set(descent.STATUSES)


LINEAR_ONLY = sorted(n for n, o in obs.REGISTRY.items() if o.linear_only)


def test_every_linear_only_observable_is_refused_by_name():
    assert set(LINEAR_ONLY) >= {"excess_risk", "distance_to_pi_star", "pl_ratio", "pl_lower_bound",
                                "balance_drift", "end_to_end"}
    prob = problem.gaussian(10, 3, seed=0)
    net = models.mlp(jax.random.key(0), (3, 3, 1), 0.5, "gelu")
    for name in LINEAR_ONLY:
        with pytest.raises(ValueError, match=f"'{name}' is defined for linear networks only"):
            gflow.solve(net, prob, observables=["risk", name])
        with pytest.raises(ValueError, match=f"'{name}'"):
            descent.run(net, prob, [0.1], 5, observables=[name])
    assert obs.defaults(net) == tuple(n for n in obs.DEFAULT if n not in LINEAR_ONLY)
    with pytest.raises(ValueError, match="no end-to-end regressor"):
        models.end_to_end(net)


@pytest.mark.parametrize("name", LINEAR_ONLY)
def test_the_command_refuses_a_linear_only_observable_in_one_line(tmp_path, capsys, name):
    path = tmp_path / "s.toml"
    path.write_text(f"""name = "g"\n[data]\nkind = "gaussian"\nn = 10\nd = 3\n[model]\nkind = "mlp"
depth = 2\nactivation = "gelu"\ninit = {{ kind = "small_scale", scale = 0.5 }}
[record]\nobservables = ["risk", "{name}"]\n""")
    with pytest.raises(scenario.ScenarioError, match=f"record.observables: observable '{name}'"):
        scenario.load(path)
    assert cli.main(["run", str(path), "--out", str(tmp_path / "r")]) == 2 and not (tmp_path / "r").exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"'{name}'" in lines[0] and "linear networks only" in lines[0]


def test_gelu_run_folder_round_trips_and_is_judged_as_a_gelu_run(gelu_run):
    result, data = gelu_run
    back = gflow.load_run(result.folder)
    for which in ("initial", "final"):
        net = gflow.trajectory.model_from(back.flow, which)
        assert net.activation == "gelu"
        np.testing.assert_array_equal(models.outputs(net, data["X"]),
                                      models.outputs(gflow.trajectory.model_from(result.flow, which), data["X"]))
    np.testing.assert_allclose(models.outputs(net, data["X"]), result.flow.outputs.values[-1], rtol=1e-12)
    assert descent.model_from(back.descent).activation == "gelu"
    verdicts = {c.name: c.verdict for c in back.checks}
    for name in ("conservation", "pl_pointwise", "lemma_rank_one", "corollary_converges", "sharpness_lower_bound",
                 "balanced_between_bounds", "gd_fails_above_eta_crit"):
        assert verdicts[name] == "not applicable", name
    for name in ("final_weights_consistent", "monotone_risk", "energy_identity", "hessian_psd_at_minimizer",
                 "sharpness_gauss_newton"):
        assert verdicts[name] == "holds", name
    summary = (result.folder and open(f"{result.folder}/summary.md").read())
    assert "‖∇R‖² < 1e-09" in summary and "2La (reference only" in summary
    assert set(back.descent.status.values.ravel()) <= set(descent.STATUSES)


def test_a_gelu_sweep_runs_and_draws_reference_lines(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("""name = "gs"\n[data]\nkind = "gaussian"\nn = 12\nd = 2\nnoise = 0.0
[model]\nkind = "mlp"\ndepth = 2\nwidth = 2\nactivation = "gelu"\ninit = { kind = "small_scale", scale = 0.5 }
[flow]\nt_max = 5.0\n[descent]\nstep_sizes = [0.1]\nsteps = 20\nreps = 2\nobservables = ["risk"]
[sweep]\n"model.init.scale" = [0.5, 0.9]\n""")
    result = sweep.run(str(path), str(tmp_path / "out"))
    ds = result.dataset
    assert {"final_grad_norm_sq", "final_risk", "gf_final_risk", "gf_final_sharpness"} <= set(ds.data_vars)
    assert "final_distance_to_pi_star" not in ds
    assert any("sharpness_vs_scale" in f for f in result.figures)
    raw = scenario.load(path).model_dump(exclude_none=True)
    raw["sweep"] = {"model.activation": ["linear", "gelu"]}
    with pytest.raises(scenario.ScenarioError, match="one activation at a time"):
        sweep.plan(scenario.from_dict(raw))
