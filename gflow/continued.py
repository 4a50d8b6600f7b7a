"""Observables continued from one save to the next along a solve.

A few observables are costly at every save but cheap from a good guess: the Hessian's top
eigenpairs converge in a few Lanczos products from the previous save's eigenvectors. A
solve therefore saves the weights and, after the solve, evaluates such observables at the
saves in time order with a `lax.scan` ([`along`][]) carrying each one's state (its last
eigenvectors). The values agree with a fresh evaluation to the eigensolver's tolerance
(`linalg.LANCZOS_TOL`): the carry saves work only.

Once the weights are saved, the other observables are evaluated from them in the same scan
too, rather than inside the solve: Diffrax inlines a save function wherever it saves (at
the save times and at t1), so observables inside the solve are compiled twice. Evaluated
after it, they are compiled once, at the same saved states, with the same values (bit for
bit on the cases checked: paper size, modified and central flows, GELU, residual; the test
allows round-off). At paper size with the default observables this cut XLA's compile time
by ~20% and the run time by ~30% (`benchmarks/bench_flow.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from .models import n_trainable
from .observables import REGISTRY, Observable, padded_to_top, top_count, hessian_top
from .problem import Problem


class Continued(eqx.Module):
    """How a registered observable continues, along a solve, from what it found at the
    previous save (an eigensolver from the last eigenvectors): `init(model, problem)` is
    the carry before the first save, `step(model, problem, carry)` returns (value, next
    carry). The value must not depend on the carry beyond the observable's own tolerance:
    the carry saves work only."""

    observable: Observable
    init: Callable = eqx.field(static=True)
    step: Callable = eqx.field(static=True)


CONTINUED: dict[str, Continued] = {}
"""The observables that [`along`][] continues from save to save, by name."""

def continues(name: str, init: Callable):
    """Decorator adding `step(model, problem, carry) -> (value, carry)` to `CONTINUED` as
    the continued form of the registered observable `name` (see [`Continued`][])."""

    def decorator(step: Callable) -> Callable:
        CONTINUED[name] = Continued(REGISTRY[name], init, step)
        return step

    return decorator


def split(observables: Sequence[Observable]) -> tuple[tuple[Observable, ...], tuple[Observable, ...]]:
    """(the observables evaluated at each save on its own, those continued from the
    previous save): an observable is continued when `CONTINUED` has it under its name with
    the same function (re-registering a name with [`register`][] makes it an ordinary one
    again). Functions, not objects, are compared: `jit` rebuilds the modules it is given."""

    def warm(o):
        return o.name in CONTINUED and CONTINUED[o.name].observable.fn is o.fn

    return tuple(o for o in observables if not warm(o)), tuple(o for o in observables if warm(o))


def along(warm: Sequence[Observable], states, static, problem: Problem, each: Callable[..., dict]) -> dict:
    """What each saved state holds, by name. `states` are the saved states y = (W, E) with a
    leading axis of saves in time order (W the trainable leaves; the network's other leaves
    are in `static`). A `lax.scan` carries the state of each continued observable in `warm`
    (see `CONTINUED`) from one save to the next; `each(y)` is the rest of a save, a dict
    evaluated at each save on its own. Diffrax fills the slots after the end of a solve with
    inf: there everything is NaN (`trim` drops them). `each` runs there at y = 0, since
    LAPACK prints warnings on stdout when its input holds inf; a continued observable skips
    its eigensolver and passes its carry on unchanged."""
    forms = [CONTINUED[o.name] for o in warm]
    first = eqx.combine(jax.tree.map(lambda w: w[0], states[0]), static)

    def compute(params, carry):
        model = eqx.combine(params, static)
        out = [c.step(model, problem, s) for c, s in zip(forms, carry)]
        return {o.name: jnp.asarray(v, jnp.float64) for o, (v, _) in zip(warm, out)}, tuple(s for _, s in out)

    def step(carry, y):
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(w)) for w in jax.tree.leaves(y)]))
        shapes = jax.eval_shape(compute, y[0], carry)[0]

        def skip(params, carry):
            return {k: jnp.full(v.shape, jnp.nan, v.dtype) for k, v in shapes.items()}, carry

        values, carry = jax.lax.cond(finite, compute, skip, y[0], carry)
        # The rest outside the cond (it ran slower inside).
        rest = each(jax.tree.map(lambda w: jnp.where(finite, w, 0.0), y))
        return carry, {**{k: jnp.where(finite, v, jnp.nan) for k, v in rest.items()}, **values}

    return jax.lax.scan(step, tuple(c.init(first, problem) for c in forms), states)[1]


def _no_eigenvectors(k: Callable):
    """The carry of a Hessian eigensolver before the first save: k(model) rows of NaN."""

    def init(model, problem):
        return jnp.full((k(model), n_trainable(model)), jnp.nan)

    return init


@continues("sharpness", _no_eigenvectors(lambda model: 1))
def _sharpness_from(model, problem, previous):
    pairs = hessian_top(model, problem, 1, previous)
    return pairs.values[0], pairs.vectors


@continues("top_eigenvalues", _no_eigenvectors(top_count))
def _top_eigenvalues_from(model, problem, previous):
    pairs = hessian_top(model, problem, previous.shape[0], previous)
    return padded_to_top(pairs.values), pairs.vectors
