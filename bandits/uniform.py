"""Uniform random slates: the logging baseline. Propensity ``1 / (valid candidates left)``."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Int

from bandits import slates
from bandits.policy import Policy, PolicySpec, make_policy
from bandits.types import Candidates, Feedback, Ranked

__all__ = ["UniformState", "uniform"]

VERSION = 1


class UniformState(NamedTuple):
    """No statistics; only the dimensions it was built for (for input checks)."""

    shape: Int[Array, "du dt"]  # zeros of shape (d_user, d_track); carries the dims
    n: Int[Array, ""]  # rows seen


def uniform() -> Policy:
    """Pick slates uniformly at random among the valid candidates."""
    spec = PolicySpec("uniform", VERSION, {})

    def init(d_user: int, d_track: int) -> UniformState:
        return UniformState(jnp.zeros((d_user, d_track), jnp.int8), jnp.zeros((), jnp.int32))

    def score(state: UniformState, context: Array, candidates: Candidates, mask: Array) -> Array:
        return slates.masked(jnp.zeros(mask.shape, jnp.float32), mask)

    def rank(
        state: UniformState,
        context: Array,
        candidates: Candidates,
        mask: Array,
        key: Array,
        slate_size: int,
    ) -> Ranked:
        return slates.plackett_luce(jnp.zeros(mask.shape, jnp.float32), mask, key, slate_size)

    def update(state: UniformState, feedback: Feedback) -> UniformState:
        return state._replace(n=state.n + feedback.mask.sum().astype(jnp.int32))

    return make_policy(
        spec,
        init=init,
        score=score,
        rank=rank,
        update=update,
        dims=lambda s: (s.shape.shape[0], s.shape.shape[1]),
    )
