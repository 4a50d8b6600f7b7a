"""The least-squares regression problem a network is trained on (theory.md §1).

The risk depends on the data only through Σ̂ = XᵀX/n and π*, since the normal equations
Σ̂π* = Xᵀy/n always hold for the minimum-norm least-squares solution:

    R(w) = (1/n)‖y − Xw‖² = R_min + (w − π*)ᵀ Σ̂ (w − π*).

Written that way the excess risk has no cancellation (it stays accurate at 1e-20) and
costs O(d²) whatever n is.
"""

from __future__ import annotations

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


FULL_RANK_RTOL = 1e-12
"""Σ̂ counts as full rank when λ > FULL_RANK_RTOL·Λ (relative to float64 round-off in Σ̂)."""


def is_full_rank(lam: float, Lam: float) -> bool:
    """Whether Σ̂ with extreme eigenvalues λ ≤ Λ has full rank (the overdetermined case,
    where every global minimizer implements π*). The one place this is decided."""
    return bool(float(lam) > FULL_RANK_RTOL * float(Lam))


class DataError(ValueError):
    """Data that cannot define a regression problem (bad shape, NaN, missing file)."""


class Problem(eqx.Module):
    """Least squares on (X, y), with the constants the theorems use.

    Build it with [`Problem.from_data`][], [`gaussian`][], [`anisotropic`][] or
    [`load`][], which validate their input; the fields are then consistent.

    **Fields:**

    - `X`, `y`: training data, shapes (n, d) and (n,).
    - `X_test`, `y_test`: held-out data (shape (0, d) and (0,) when there is none).
    - `sigma`: Σ̂ = XᵀX/n.
    - `pi_star`: minimum-norm least-squares regressor.
    - `R_min`: (1/n)‖y − Xπ*‖².
    - `lam`, `Lam`: smallest and largest eigenvalue of Σ̂.
    - `a`: uᵀΣ̂u with u = π*/‖π*‖.
    """

    X: Float[Array, "n d"]
    y: Float[Array, " n"]
    X_test: Float[Array, "m d"]
    y_test: Float[Array, " m"]
    sigma: Float[Array, "d d"]
    pi_star: Float[Array, " d"]
    R_min: Float[Array, ""]
    lam: Float[Array, ""]
    Lam: Float[Array, ""]
    a: Float[Array, ""]

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @property
    def overdetermined(self) -> bool:
        """Σ̂ has full rank, so every global minimizer implements π*."""
        return is_full_rank(self.lam, self.Lam)

    def excess_risk(self, w: Float[Array, " d"]) -> Float[Array, ""]:
        """R(w) − R_min = (w − π*)ᵀ Σ̂ (w − π*), free of cancellation."""
        e = w - self.pi_star
        return e @ (self.sigma @ e)

    def risk(self, w: Float[Array, " d"]) -> Float[Array, ""]:
        """R(w) = (1/n)‖y − Xw‖²."""
        return self.R_min + self.excess_risk(w)

    def risk_gradient(self, w: Float[Array, " d"]) -> Float[Array, " d"]:
        """g = ∇_w R = 2 Σ̂ (w − π*)."""
        return 2.0 * (self.sigma @ (w - self.pi_star))

    def test_risk(self, w: Float[Array, " d"]) -> Float[Array, ""]:
        """(1/m)‖y_test − X_test w‖² (NaN without a test set)."""
        if self.X_test.shape[0] == 0:
            return jnp.array(jnp.nan)
        return jnp.mean((self.y_test - self.X_test @ w) ** 2)

    @classmethod
    def from_data(cls, X, y, X_test=None, y_test=None) -> Problem:
        """Validate (X, y) and compute π*, R_min, λ, Λ and a in float64.

        Raises `DataError` with a message naming what is wrong.
        """
        X = _as_matrix(X, "X")
        y = _as_vector(y, "y", X.shape[0])
        if X_test is None or np.size(X_test) == 0:
            X_test, y_test = np.zeros((0, X.shape[1])), np.zeros((0,))
        else:
            X_test = _as_matrix(X_test, "X_test")
            if X_test.shape[1] != X.shape[1]:
                raise DataError(
                    f"X_test has {X_test.shape[1]} columns but X has {X.shape[1]}."
                )
            y_test = _as_vector(y_test, "y_test", X_test.shape[0])
        n = X.shape[0]
        sigma = X.T @ X / n
        sigma = (sigma + sigma.T) / 2
        pi_star = np.linalg.lstsq(X, y, rcond=None)[0]
        residual = y - X @ pi_star
        eigs = np.linalg.eigvalsh(sigma)
        norm = np.linalg.norm(pi_star)
        a = pi_star @ sigma @ pi_star / norm**2 if norm > 0 else np.nan
        fields = dict(X=X, y=y, X_test=X_test, y_test=y_test, sigma=sigma, pi_star=pi_star,
                      R_min=residual @ residual / n, lam=max(eigs[0], 0.0), Lam=eigs[-1], a=a)
        return cls(**{name: _on_device(value) for name, value in fields.items()})

    def constants(self) -> dict[str, float]:
        """The problem's scalar constants, as plain floats (for attrs and reports)."""
        return dict(
            n=self.n,
            d=self.d,
            lam=float(self.lam),
            Lam=float(self.Lam),
            a=float(self.a),
            pi_star_norm=float(jnp.linalg.norm(self.pi_star)),
            R_min=float(self.R_min),
        )


def _on_device(a) -> jax.Array:
    """A float64 JAX array of `a`, put on the device as it is: `jnp.asarray` of a NumPy
    array compiles and runs a small program per shape (7 of them per problem)."""
    return jax.device_put(np.asarray(a, np.float64))


def _as_matrix(X, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{name} must be a non-empty 2-D array (n, d); got shape {X.shape}.")
    if not np.all(np.isfinite(X)):
        raise DataError(f"{name} has {np.sum(~np.isfinite(X))} NaN or infinite entries.")
    return X


def _as_vector(y, name: str, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{name} must have shape ({n},) to match the rows of X; got {y.shape}.")
    if not np.all(np.isfinite(y)):
        raise DataError(f"{name} has {np.sum(~np.isfinite(y))} NaN or infinite entries.")
    return y


def _targets(rng, X, w_true, noise):
    return X @ w_true + noise * rng.standard_normal(X.shape[0])


def _rescaled(X, y, X_test, y_test, unit_pi_star: bool) -> Problem:
    """Divide y (and y_test) by ‖π*‖ so that ‖π*‖ = 1, as the paper does."""
    if unit_pi_star:
        norm = np.linalg.norm(np.linalg.lstsq(X, y, rcond=None)[0])
        if norm == 0:
            raise DataError("π* = 0: the targets cannot be rescaled to ‖π*‖ = 1.")
        y, y_test = y / norm, y_test / norm
    return Problem.from_data(X, y, X_test, y_test)


def _check_sizes(n: int, d: int, noise: float, n_test: int):
    if int(n) < 1 or int(d) < 1 or int(n_test) < 0:
        raise DataError(f"n and d must be positive and n_test non-negative; got n={n}, d={d}, n_test={n_test}.")
    if not np.isfinite(noise) or noise < 0:
        raise DataError(f"noise must be a finite non-negative number; got {noise}.")


def gaussian(
    n: int, d: int, *, noise: float = 1.0, seed: int = 0, n_test: int = 0, unit_pi_star: bool = True
) -> Problem:
    """The paper's data (theory.md §7): X ~ N(0, I), y = X w_true + noise·N(0, 1).

    **Arguments:**

    - `n`, `d`: number of samples and features.
    - `noise`: standard deviation of the label noise.
    - `seed`: seed of NumPy's default generator (same seed, same data).
    - `n_test`: size of a test set drawn the same way.
    - `unit_pi_star`: rescale y and y_test so that ‖π*‖ = 1.
    """
    _check_sizes(n, d, noise, n_test)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X_test = rng.standard_normal((n_test, d))
    w_true = rng.standard_normal(d)
    y = _targets(rng, X, w_true, noise)
    y_test = _targets(rng, X_test, w_true, noise)
    return _rescaled(X, y, X_test, y_test, unit_pi_star)


def anisotropic(
    n: int,
    d: int,
    *,
    condition: float,
    noise: float = 1.0,
    seed: int = 0,
    n_test: int = 0,
    unit_pi_star: bool = True,
) -> Problem:
    """Gaussian-like data whose Σ̂ has condition number Λ/λ = `condition` exactly.

    X = U diag(s) Vᵀ with U, V random orthonormal and s chosen so that the eigenvalues of
    XᵀX/n are geometrically spaced from 1/√condition to √condition. Needs n ≥ d.
    """
    _check_sizes(n, d, noise, n_test)
    if n < d:
        raise DataError(f"anisotropic data needs n ≥ d to fix the spectrum of Σ̂; got n={n}, d={d}.")
    if not np.isfinite(condition) or condition < 1:
        raise DataError(f"condition must be a finite number ≥ 1; got {condition}.")
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, d)))
    V, _ = np.linalg.qr(rng.standard_normal((d, d)))
    eigs = np.geomspace(condition**-0.5, condition**0.5, d)
    X = U @ np.diag(np.sqrt(n * eigs)) @ V.T
    w_true = rng.standard_normal(d)
    y = _targets(rng, X, w_true, noise)
    X_test = rng.standard_normal((n_test, d)) @ np.diag(np.sqrt(eigs)) @ V.T
    y_test = _targets(rng, X_test, w_true, noise)
    return _rescaled(X, y, X_test, y_test, unit_pi_star)


DATASETS = {"diabetes": "442 patients × 10 baseline variables → disease progression after one year",
            "linnerud": "20 men × 3 exercises (chins, sit-ups, jumps) → body weight"}
"""Regression data sets that ship inside scikit-learn (no download), by name."""


def dataset(name: str, *, n_test: int = 0, seed: int = 0, unit_pi_star: bool = True) -> Problem:
    """A real regression data set from [`DATASETS`][] (needs the extra `gflow[datasets]`).

    `n_test` rows drawn at random (NumPy generator seeded by `seed`) are held out as the
    test set. The networks have no bias, so the features are standardized and the targets
    centred with the training rows' means and standard deviations (the test rows are
    transformed alike); then, with `unit_pi_star`, y is divided by ‖π*‖ as the paper does.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}.")
    X, y = _bundled(name)
    if not 0 <= int(n_test) < X.shape[0] - 1:
        raise DataError(f"n_test must lie in [0, {X.shape[0] - 2}] for {name} ({X.shape[0]} rows); got {n_test}.")
    order = np.random.default_rng(seed).permutation(X.shape[0])
    test, train = order[: int(n_test)], order[int(n_test) :]
    mean, std = X[train].mean(axis=0), X[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    center = y[train].mean()
    X, y = (X - mean) / std, y - center
    return _rescaled(X[train], y[train], X[test], y[test], unit_pi_star)


def _bundled(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of a data set of [`DATASETS`][] as float64, from scikit-learn's own files."""
    try:
        from sklearn import datasets as bundled  # optional: the extra gflow[datasets]
    except ImportError:
        raise DataError(f"data set {name!r} needs scikit-learn: pip install 'gflow[datasets]'") from None
    if name == "diabetes":
        bunch = bundled.load_diabetes(scaled=False)
        return np.asarray(bunch.data, np.float64), np.asarray(bunch.target, np.float64)
    bunch = bundled.load_linnerud()
    return np.asarray(bunch.data, np.float64), np.asarray(bunch.target[:, 0], np.float64)


def load(path: str | os.PathLike, *, unit_pi_star: bool = False) -> Problem:
    """Load X and y from a file.

    - `.npz`: arrays named `X` and `y` (optionally `X_test`, `y_test`); never unpickled.
    - `.csv`: one row per sample, the last column is y; a header line is skipped when it
      is not numeric.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"data file {path!r} does not exist.")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as e:  # noqa: BLE001 - any unreadable file gets one message
            raise DataError(f"cannot read {path!r} as .npz: {e}") from None
        missing = {"X", "y"} - set(arrays)
        if missing:
            raise DataError(f"{path!r} lacks the arrays {sorted(missing)} (has {sorted(arrays)}).")
        if ("X_test" in arrays) != ("y_test" in arrays):
            raise DataError(f"{path!r} must hold both X_test and y_test, or neither.")
        X, y = arrays["X"], arrays["y"]
        X_test, y_test = arrays.get("X_test"), arrays.get("y_test")
    elif ext == ".csv":
        table = _read_csv(path)
        if table.shape[1] < 2:
            raise DataError(f"{path!r} needs at least two columns (features then y).")
        X, y, X_test, y_test = table[:, :-1], table[:, -1], None, None
    else:
        raise DataError(f"data file {path!r} must end in .npz or .csv.")
    try:
        if unit_pi_star:
            X, y = _as_matrix(X, "X"), _as_vector(y, "y", np.shape(X)[0])
            if X_test is None:
                X_test, y_test = np.zeros((0, X.shape[1])), np.zeros(0)
            return _rescaled(X, y, np.asarray(X_test, float), np.asarray(y_test, float), True)
        return Problem.from_data(X, y, X_test, y_test)
    except DataError as e:
        raise DataError(f"{path!r}: {e}") from None


def _read_csv(path: str) -> np.ndarray:
    with open(path) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    if lines:
        try:
            [float(v) for v in lines[0].split(",")]
        except ValueError:
            lines = lines[1:]
    if not lines:
        raise DataError(f"{path!r} holds no data rows.")
    try:
        rows = [[float(v) for v in line.split(",")] for line in lines]
    except ValueError as e:
        raise DataError(f"{path!r} has a non-numeric entry: {e}.") from None
    if len({len(r) for r in rows}) != 1:
        raise DataError(f"{path!r} has rows of different lengths.")
    return np.asarray(rows, dtype=np.float64)
