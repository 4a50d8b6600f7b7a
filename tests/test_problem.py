import sys

import numpy as np
import pytest

from gflow import problem
from gflow.problem import DataError, Problem


def test_constants_match_direct_computation():
    prob = problem.gaussian(60, 7, seed=3)
    X, y = np.asarray(prob.X), np.asarray(prob.y)
    pi = np.linalg.lstsq(X, y, rcond=None)[0]
    np.testing.assert_allclose(prob.pi_star, pi, rtol=1e-12)
    assert float(np.linalg.norm(prob.pi_star)) == pytest.approx(1.0, rel=1e-12)
    assert float(prob.R_min) == pytest.approx(np.mean((y - X @ pi) ** 2), rel=1e-12)
    eigs = np.linalg.eigvalsh(X.T @ X / 60)
    assert float(prob.lam) == pytest.approx(eigs[0], rel=1e-10)
    assert float(prob.Lam) == pytest.approx(eigs[-1], rel=1e-10)
    assert float(prob.lam) <= float(prob.a) <= float(prob.Lam)


def test_risk_identity_holds_without_cancellation():
    prob = problem.gaussian(50, 5, seed=0)
    X, y = np.asarray(prob.X), np.asarray(prob.y)
    w = np.random.default_rng(1).standard_normal(5)
    assert float(prob.risk(w)) == pytest.approx(np.mean((y - X @ w) ** 2), rel=1e-12)
    tiny = np.asarray(prob.pi_star) + 1e-9 * np.ones(5)
    direct = 1e-18 * np.ones(5) @ (X.T @ X / 50) @ np.ones(5)
    assert float(prob.excess_risk(tiny)) == pytest.approx(direct, rel=1e-6)


def test_paper_data_has_a_test_set_drawn_alike():
    prob = problem.gaussian(50, 5, seed=0, n_test=200)
    assert prob.X_test.shape == (200, 5)
    assert np.isfinite(float(prob.test_risk(prob.pi_star)))


@pytest.mark.parametrize("condition", [1.0, 10.0, 1e4])
def test_anisotropic_condition_number_is_exact(condition):
    prob = problem.anisotropic(80, 6, condition=condition, seed=2)
    assert float(prob.Lam / prob.lam) == pytest.approx(condition, rel=1e-10)


def test_load_npz_and_csv_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((30, 4)), rng.standard_normal(30)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",", header="a,b,c,d,y", comments="")
    for name in ("d.npz", "d.csv"):
        prob = problem.load(tmp_path / name)
        np.testing.assert_allclose(prob.X, X, rtol=1e-15)
        np.testing.assert_allclose(prob.y, y, rtol=1e-15)


@pytest.mark.parametrize(
    "X, y, message",
    [
        (np.ones((5, 2)), np.ones(4), "shape"),
        (np.full((5, 2), np.nan), np.ones(5), "NaN"),
        (np.ones((5, 2)), np.array([1, 2, np.inf, 4, 5.0]), "NaN or infinite"),
        (np.ones(5), np.ones(5), "2-D"),
    ],
)
def test_bad_data_is_refused_with_a_message(X, y, message):
    with pytest.raises(DataError, match=message):
        Problem.from_data(X, y)


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        problem.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "nox.npz", y=np.ones(3))
    with pytest.raises(DataError, match="lacks"):
        problem.load(tmp_path / "nox.npz")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    (tmp_path / "obj.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        problem.load(tmp_path / "obj.npz")
    np.savez(tmp_path / "pickled.npz", X=np.array([[1, 2]], dtype=object), y=np.ones(1))
    with pytest.raises(DataError):
        problem.load(tmp_path / "pickled.npz")
    (tmp_path / "bad.csv").write_text("1,2,3\n4,x,6\n")
    with pytest.raises(DataError, match="non-numeric"):
        problem.load(tmp_path / "bad.csv")
    with pytest.raises(DataError, match=".npz or .csv"):
        problem.load(tmp_path / "obj.npy")


def test_diabetes_is_standardized_split_and_rescaled_from_the_training_rows():
    sk = pytest.importorskip("sklearn.datasets")
    raw = sk.load_diabetes(scaled=False)
    prob = problem.dataset("diabetes", n_test=42, seed=5)
    plain = problem.dataset("diabetes", n_test=42, seed=5, unit_pi_star=False)
    X, X_test = np.asarray(prob.X), np.asarray(prob.X_test)
    assert (prob.n, prob.d, X_test.shape) == (400, 10, (42, 10))
    np.testing.assert_allclose(X.mean(axis=0), 0, atol=1e-12)  # the training rows' statistics
    np.testing.assert_allclose(X.std(axis=0), 1, rtol=1e-12)
    assert abs(float(np.mean(plain.y))) < 1e-9
    assert float(np.linalg.norm(prob.pi_star)) == pytest.approx(1.0, rel=1e-12)

    def standardized(A):  # an affine map per column disappears under standardization
        return (A - A.mean(axis=0)) / A.std(axis=0)

    # training and test rows are the 442 patients, each once, under one affine map per column
    rows = {tuple(r) for r in np.round(standardized(np.concatenate([X, X_test])), 8)}
    assert rows == {tuple(r) for r in np.round(standardized(raw.data), 8)} and len(rows) == 442
    targets = np.concatenate([plain.y, plain.y_test])
    np.testing.assert_allclose(np.sort(targets - targets.mean()), np.sort(raw.target - raw.target.mean()), atol=1e-9)
    # ‖π*‖ = 1 divides training and test targets by one number
    ratio = np.concatenate([plain.y, plain.y_test]) / np.concatenate([prob.y, prob.y_test])
    np.testing.assert_allclose(ratio, np.linalg.norm(plain.pi_star), rtol=1e-10)
    assert not np.allclose(np.asarray(problem.dataset("diabetes", n_test=42, seed=6).X_test), X_test)
    with pytest.raises(DataError, match="n_test"):
        problem.dataset("linnerud", n_test=19)


def test_a_dataset_without_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(DataError, match=r"gflow\[datasets\]"):
        problem.dataset("diabetes")
    with pytest.raises(DataError, match="unknown data set"):
        problem.dataset("iris")
