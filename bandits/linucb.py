"""LinUCB over joint user x track features (shared parameters, optional per-track bias).

Score ``mean + alpha * sqrt(var)`` and rank greedily (every propensity is 1: the choice is
deterministic given the state). See ``bandits.linear`` for the model, forgetting, position bias
and the numerics.

References:
    Li, Chu, Langford, Schapire. A contextual-bandit approach to personalized news article
    recommendation. WWW 2010.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array

from bandits import linear, slates
from bandits.linear import LinearDelta, LinearState, add_deltas, delta, merge
from bandits.policy import Policy
from bandits.types import Candidates, Ranked

__all__ = ["LinearDelta", "LinearState", "add_deltas", "delta", "linucb", "merge"]

VERSION = 1


def linucb(
    *,
    alpha: float = 1.0,
    ridge: float = 1.0,
    discount: float = 1.0,
    adapt_window: float = linear.ADAPT_WINDOW,
    refactor_every: int = 1000,
    n_ids: int = 4096,
    id_ridge: float = 10.0,
    position_bias: tuple[float, ...] = (1.0,),
) -> Policy:
    """LinUCB with a shared linear model over joint features.

    Args:
        alpha: width of the confidence bonus (in noise standard deviations).
        ridge: prior precision of the linear weights.
        discount: forgetting factor per update row batch; 1.0 keeps everything.
        adapt_window: adaptation to change (``bandits.linear``): the memory of a
            challenger fitted with forgetting, in multiples of the joint dimension (rows),
            whose statistics replace the model's when it predicts clearly better; 0 is off.
        refactor_every: rows between Cholesky re-factorisations of the inverse.
        n_ids: size of the hashed per-track bias table (``id % n_ids``; distinct ids that
            collide share a bias: ``linear.shared_slots`` counts them, and about 20 times the
            catalogue keeps them near 5 %); 0 disables it.
        id_ridge: prior precision of each per-track bias.
        position_bias: examination weight of slate positions 0, 1, ... (the last repeats).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from bandits.types import Candidates
        >>> p = linucb(n_ids=0)
        >>> s = p.init(2, 3)
        >>> c = Candidates(jnp.ones((4, 3)), jnp.arange(4, dtype=jnp.int32))
        >>> p.rank(s, jnp.ones(2), c, jnp.ones(4, bool), key=jax.random.key(0), slate_size=2).order.shape
        (2,)
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")

    params = linear.LinearParams(
        ridge, discount, refactor_every, n_ids, id_ridge, position_bias, adapt_window
    )

    def score(
        state: linear.AnyLinear, context: Array, candidates: Candidates, mask: Array
    ) -> Array:
        mean, var, _, _ = linear.predict(state, context, candidates, id_ridge)
        return slates.masked(mean + alpha * jnp.sqrt(var), mask)

    def rank(
        state: linear.AnyLinear,
        context: Array,
        candidates: Candidates,
        mask: Array,
        key: Array,
        slate_size: int,
    ) -> Ranked:
        del key  # deterministic
        return slates.greedy(score(state, context, candidates, mask), mask, slate_size)

    return linear.make("linucb", VERSION, {"alpha": float(alpha)}, params, score=score, rank=rank)
