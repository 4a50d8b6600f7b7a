import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gflow import models, observables
from gflow.models import ShapeError


def _product(layers):
    out = np.asarray(layers[0])
    for w in layers[1:]:
        out = np.asarray(w) @ out
    return out


def test_end_to_end_of_an_mlp_with_mixed_widths():
    model = models.mlp(jax.random.key(0), [5, 7, 3, 3, 3, 1], 0.7)
    assert model.widths == (5, 7, 3, 3, 3, 1) and model.depth == 5
    np.testing.assert_allclose(models.end_to_end(model), _product(model.layers())[0], rtol=1e-12)


def test_end_to_end_of_a_residual_network_includes_the_identity_and_p():
    model = models.residual(jax.random.key(1), 4, 6, 0.8)
    W = [np.eye(4) + np.asarray(v) for v in model.V]
    np.testing.assert_allclose(models.end_to_end(model), np.asarray(model.p) @ _product(W), rtol=1e-12)
    assert float(np.linalg.norm(model.p)) == pytest.approx(1.0)


def test_row_product_skips_the_first_layers():
    model = models.mlp(jax.random.key(2), [4, 6, 6, 6, 1], 1.0)
    layers = model.layers()
    np.testing.assert_allclose(models.row_product(model, skip=1), _product(layers[1:])[0], rtol=1e-12)
    np.testing.assert_allclose(models.row_product(model, skip=3), np.asarray(layers[3])[0], rtol=1e-12)


def test_p_and_the_identity_are_not_trained(paper_problem):
    model = models.residual(jax.random.key(3), 5, 4, 0.5)
    grads = observables.risk_gradient(model, paper_problem)
    assert grads.p is None and grads.V.shape == (4, 5, 5)
    params, _ = eqx.partition(model, models.trainable(model))
    assert params.p is None


def test_residual_init_has_the_stated_scale():
    d, L, s = 20, 50, 0.7
    model = models.residual(jax.random.key(4), d, L, s)
    assert float(np.std(np.asarray(model.V))) == pytest.approx(s / np.sqrt(L * d), rel=0.05)


@pytest.mark.parametrize("widths", [(3, 4, 4, 1), (5, 7, 3, 3, 3, 1), (7, 3, 9, 9, 9, 2, 1), (2, 1)])
@pytest.mark.parametrize("scale", [0.35, 1e-3, 3 / np.sqrt(40)])
def test_mlp_init_is_the_layer_by_layer_draw_bit_for_bit(widths, scale):
    """`mlp` draws all layers in one program: the weights must be those of the definition
    W_k = scale · N(key_k), drawn one by one. (Without the barrier between the draws and
    the product by `scale`, XLA fuses them and moves weights by an ulp: caught here.)"""
    for seed in range(3):
        key = jax.random.key(seed)
        keys = jax.random.split(key, len(widths) - 1)
        expected = [scale * jax.random.normal(keys[k], (widths[k + 1], widths[k]), jnp.float64)
                    for k in range(len(widths) - 1)]
        for w, e in zip(models.mlp(key, widths, scale).layers(), expected, strict=True):
            assert np.array_equal(np.asarray(w), np.asarray(e))


@pytest.mark.parametrize("d, depth, s", [(3, 1, 0.1), (5, 10, 1.0), (20, 4, 3.0)])
def test_residual_init_is_the_definition_bit_for_bit(d, depth, s):
    """V_k = (s/√(L d)) N and p = N/‖N‖, from `key` and `p_key` as documented."""
    for seed, p_seed in ((0, None), (1, 7)):
        key = jax.random.key(seed)
        p_key = key if p_seed is None else jax.random.key(p_seed)
        model = models.residual(key, d, depth, s, p_key=None if p_seed is None else p_key)
        V = s / np.sqrt(depth * d) * jax.random.normal(jax.random.split(key)[1], (depth, d, d), jnp.float64)
        p = jax.random.normal(jax.random.split(p_key)[0], (d,), jnp.float64)
        assert np.array_equal(np.asarray(model.V), np.asarray(V))
        assert np.array_equal(np.asarray(model.p), np.asarray(p / jnp.linalg.norm(p)))


def test_init_takes_a_traced_scale():
    """Under `vmap` over scales (or `jit`), the weights are those of each scale on its own (a
    traced scale cannot become a NumPy float: it is passed as it is). Bit for bit on XLA's
    default build; the tests' build rounds the batched program differently, by an ulp."""
    key, scales = jax.random.key(3), jnp.array([0.1, 0.35])
    batched = jax.vmap(lambda s: models.mlp(key, (3, 4, 4, 1), s).blocks)(scales)
    for i, s in enumerate(scales):
        for b, one in zip(batched, models.mlp(key, (3, 4, 4, 1), float(s)).blocks, strict=True):
            np.testing.assert_allclose(b[i], one, rtol=4.5e-16, atol=0)  # one ulp: 2⁻⁵² to 2⁻⁵¹ relative
    V = jax.jit(lambda s: models.residual(key, 3, 2, s).V)(0.5)
    np.testing.assert_allclose(V, models.residual(key, 3, 2, 0.5).V, rtol=4.5e-16, atol=0)


def test_weights_round_trip_through_npz(tmp_path):
    for model in (models.mlp(jax.random.key(5), [3, 4, 4, 1], 0.3), models.residual(jax.random.key(6), 3, 3, 0.2)):
        kind = "residual" if isinstance(model, models.Residual) else "mlp"
        models.save_layers(model, tmp_path / "w.npz")
        back = models.load_layers(tmp_path / "w.npz", kind)
        for a, b in zip(model.layers(), back.layers()):
            np.testing.assert_allclose(a, b, rtol=1e-15, atol=1e-15)
        np.testing.assert_allclose(model.p, back.p)


@pytest.mark.parametrize(
    "layers, kind, message",
    [
        ([np.ones((3, 2)), np.ones((1, 4))], "mlp", "chain"),
        ([np.ones((3, 2)), np.ones((2, 3))], "mlp", "one row"),
        ([np.full((1, 2), np.nan)], "mlp", "NaN"),
        ([np.eye(2), np.ones((3, 2))], "residual", "2 × 2"),
    ],
)
def test_impossible_weights_are_refused(layers, kind, message):
    with pytest.raises(ShapeError, match=message):
        models.from_layers(layers, p=np.ones(2), kind=kind)


def test_bad_widths_are_refused():
    with pytest.raises(ShapeError):
        models.mlp_widths(5, 0, 5)
    with pytest.raises(ShapeError):
        models.mlp_widths(5, 3, [4])
    with pytest.raises(ShapeError):
        models.mlp(jax.random.key(0), [5, 0, 1], 0.1)
