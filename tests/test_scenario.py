import textwrap

import numpy as np
import pytest

from gflow import scenario as scen
from gflow.scenario import ScenarioError

SMALL = textwrap.dedent(
    """
    name = "tiny"
    seed = 1

    [data]
    kind = "gaussian"
    n = 20
    d = 3

    [model]
    kind = "mlp"
    depth = 3
    width = 3
    init = { kind = "small_scale", scale = 0.5 }

    [flow]
    t_max = 1e3
    saves = 30
    """
)


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_shipped_scenarios_validate():
    import glob

    files = sorted(glob.glob("scenarios/**/*.toml", recursive=True))
    assert len(files) >= 3
    for path in files:
        scen.load(path)


def test_a_scenario_builds_its_problem_and_model(tmp_path):
    s = scen.load(write(tmp_path, SMALL))
    prob, model = s.validate_inputs()
    assert (prob.n, prob.d) == (20, 3)
    assert model.widths == (3, 3, 3, 1)
    again = scen.load(write(tmp_path, SMALL)).validate_inputs()[1]
    np.testing.assert_array_equal(model.layers()[0], again.layers()[0])  # same seed, same init


@pytest.mark.parametrize(
    "old, new, field, message",
    [
        ("depth = 3\n", "", "model", "depth is required"),
        ("depth = 3", "depth = 3\ndepht = 3", "model.depht", "unknown key"),
        ("depth = 3", 'depth = "three"', "model.depth", "integer"),
        ("depth = 3", "depth = 0", "model.depth", "greater than 0"),
        ("width = 3", "width = -2", "model.width", "greater than 0"),
        ("n = 20", "n = 0", "data.n", "greater than 0"),
        ("t_max = 1e3", "t_max = 1e3\nrtol = 0.0", "flow.rtol", "greater than 0"),
        ("t_max = 1e3", "t_max = 1e3\natol = -1e-9", "flow.atol", "greater than 0"),
        ("t_max = 1e3", 't_max = 1e3\nsolver = "rk4"', "flow.solver", "tsit5"),
        ("t_max = 1e3", "t_max = nan", "flow.t_max", "finite"),
        ("[flow]", '[record]\nobservables = ["risk", "curvature"]\n[flow]', "record.observables", "curvature"),
        ('kind = "gaussian"', 'kind = "gausian"', "data", "gausian"),
        ("scale = 0.5", "scale = -0.5", "model.init.scale", "greater than 0"),
        ('name = "tiny"', 'name = "has space"', "name", "pattern"),
        ('name = "tiny"\n', "", "name", "missing required key"),
    ],
)
def test_bad_scenarios_name_the_file_and_field(tmp_path, old, new, field, message):
    assert old in SMALL
    path = write(tmp_path, SMALL.replace(old, new, 1))
    with pytest.raises(ScenarioError) as err:
        scen.load(path)
    text = str(err.value)
    assert text.startswith(path) and f"{field}:" in text and message in text
    assert "\n" not in text


def test_unreadable_files(tmp_path):
    with pytest.raises(ScenarioError, match="no such file"):
        scen.load(tmp_path / "nope.toml")
    with pytest.raises(ScenarioError, match="not a valid TOML"):
        scen.load(write(tmp_path, "name = [unclosed"))
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ScenarioError, match="not a valid TOML"):
        scen.load(tmp_path / "bin.toml")


def test_data_file_problems_are_scenario_errors(tmp_path):
    text = SMALL.replace('kind = "gaussian"\nn = 20\nd = 3', 'kind = "file"\npath = "data.npz"')
    s = scen.load(write(tmp_path, text))
    with pytest.raises(ScenarioError, match="data: .*does not exist"):
        s.validate_inputs()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 3))
    X[2, 1] = np.nan
    np.savez(tmp_path / "data.npz", X=X, y=rng.standard_normal(20))
    with pytest.raises(ScenarioError, match="NaN"):
        s.validate_inputs()
    np.savez(tmp_path / "data.npz", X=rng.standard_normal((20, 3)), y=rng.standard_normal(19))
    with pytest.raises(ScenarioError, match="shape"):
        s.validate_inputs()
    np.savez(tmp_path / "data.npz", X=rng.standard_normal((20, 3)), y=rng.standard_normal(20))
    prob, model = s.validate_inputs()  # relative to the scenario file
    assert prob.n == 20


def test_weights_from_a_file(tmp_path):
    from gflow import models

    layers = [np.eye(3) * 0.3, np.ones((1, 3)) * 0.2]
    models.save_layers(models.from_layers(layers), tmp_path / "w.npz")
    text = SMALL.replace("depth = 3\nwidth = 3\n", "").replace(
        'init = { kind = "small_scale", scale = 0.5 }', 'init = { kind = "file", path = "w.npz" }'
    )
    model = scen.load(write(tmp_path, text)).validate_inputs()[1]
    np.testing.assert_array_equal(model.layers()[0], layers[0])
    wrong = text.replace('kind = "mlp"', 'kind = "mlp"\ndepth = 5')
    with pytest.raises(ScenarioError, match="depth"):
        scen.load(write(tmp_path, wrong)).validate_inputs()


def test_underdetermined_data_warns(tmp_path):
    text = SMALL.replace("n = 20", "n = 2")
    with pytest.warns(UserWarning, match="underdetermined"):
        scen.load(write(tmp_path, text)).validate_inputs()


def test_sweep_expansion(tmp_path):
    text = SMALL + '\n[sweep]\n"model.init.scale" = [0.1, 0.2]\nseed = [0, 1, 2]\n"flow.rtol" = [1e-6]\n'
    runs = scen.expand(scen.load(write(tmp_path, text)))
    assert len(runs) == 6
    assert {(o["model.init.scale"], o["seed"]) for o, _ in runs} == {(a, b) for a in (0.1, 0.2) for b in (0, 1, 2)}
    for overrides, s in runs:
        assert s.model.init.scale == overrides["model.init.scale"] and s.seed == overrides["seed"]
        assert s.flow.rtol == 1e-6 and s.sweep is None
    bad = SMALL + '\n[sweep]\n"model.init.scael" = [0.1]\n'
    with pytest.raises(ScenarioError, match="sweep.model.init.scael"):
        scen.expand(scen.load(write(tmp_path, bad)))
    wrong_value = SMALL + '\n[sweep]\n"model.depth" = [2, -1]\n'
    with pytest.raises(ScenarioError, match="model.depth"):
        scen.expand(scen.load(write(tmp_path, wrong_value)))


def test_gelu_and_dataset_keys(tmp_path):
    pytest.importorskip("sklearn")
    text = SMALL.replace('kind = "gaussian"\nn = 20\nd = 3', 'kind = "dataset"\nname = "diabetes"\nn_test = 42')
    text = text.replace('depth = 3\n', 'depth = 3\nactivation = "gelu_exact"\n')
    s = scen.load(write(tmp_path, text + '\n[descent]\nstep_sizes = [0.1]\nsteps = 10\n'))
    assert s.record.observables == ["risk", "grad_norm_sq", "sharpness", "singular_values", "rank_one_gap", "alignment"]
    assert s.descent.observables == ["risk"]  # the defaults less what a GELU network lacks
    prob, model = s.validate_inputs()
    assert (prob.n, prob.d, prob.X_test.shape[0]) == (400, 10, 42) and model.activation == "gelu_exact"
    bad = SMALL.replace('kind = "mlp"\ndepth = 3\nwidth = 3\ninit = { kind = "small_scale", scale = 0.5 }',
                        'kind = "residual"\ndepth = 3\nactivation = "gelu"\ninit = { kind = "residual", s = 0.5 }')
    with pytest.raises(ScenarioError, match="model: a residual network is linear"):
        scen.load(write(tmp_path, bad))
    with pytest.raises(ScenarioError, match="model.activation"):
        scen.load(write(tmp_path, SMALL.replace('depth = 3\n', 'depth = 3\nactivation = "relu"\n')))
