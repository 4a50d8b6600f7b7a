"""Batches of networks: equal-shaped networks stacked along a leading axis, and back.

GD runs a batch under `vmap`; the fixed parts of the network (the output vector p) are
shared by the batch, so a batch refuses networks whose p differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..models import DeepLinear


def batch(models: DeepLinear | Sequence[DeepLinear]) -> DeepLinear:
    """Stack networks of equal shapes into one network whose leaves have a leading axis.

    A single unbatched network becomes a batch of one; a batch is returned as it is
    (recognized by `p` having two dimensions).
    """
    if isinstance(models, DeepLinear):
        if jnp.ndim(models.p) == 2:
            return models
        return jax.tree.map(lambda x: x[None], models)
    models = list(models)
    if not models:
        raise ValueError("models is empty: give at least one network.")
    if not all(isinstance(m, DeepLinear) for m in models):
        raise ValueError("models must be networks (gflow.models.MLP or Residual).")
    first = jax.tree.structure(models[0])
    shapes = [x.shape for x in jax.tree.leaves(models[0])]
    for i, m in enumerate(models[1:], 1):
        if jax.tree.structure(m) != first or [x.shape for x in jax.tree.leaves(m)] != shapes:
            raise ValueError(
                f"models[{i}] differs in kind or widths from models[0]; a batch needs equal shapes."
            )
        if not np.array_equal(np.asarray(m.p), np.asarray(models[0].p)):
            raise ValueError(
                f"models[{i}] has another output vector p than models[0]; GD batches share the "
                "fixed parts of the network, so run networks with different p separately."
            )
    return jax.tree.map(lambda *xs: jnp.stack(xs), *models)


def unbatch(models: DeepLinear) -> list[DeepLinear]:
    """The networks of a batch made by [`batch`][], as a list."""
    n = models.p.shape[0]
    return [jax.tree.map(lambda x: x[i], models) for i in range(n)]


def unbatch_first(models: DeepLinear) -> DeepLinear:
    """The first network of a batch made by [`batch`][]."""
    return jax.tree.map(lambda x: x[0], models)
