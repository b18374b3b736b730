"""SquareCB: inverse gap weighting over the ridge estimate of the shared linear model.

The learning rate grows with the data: ``gamma = gamma_scale * (n + 1) ** gamma_exponent``
with ``n`` the rows learned from (Vowpal Wabbit's ``--squarecb`` schedule). Slates are filled
position by position with IGW over the remaining candidates, so every propensity is exact.

References:
    Foster, Rakhlin. Beyond UCB: optimal and efficient contextual bandits with regression
    oracles. ICML 2020.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array

from bandits import linear, slates
from bandits.policy import Policy
from bandits.types import Ranked

__all__ = ["squarecb"]

VERSION = 1


def squarecb(
    *,
    gamma_scale: float = 10.0,
    gamma_exponent: float = 0.5,
    ridge: float = 1.0,
    discount: float = 1.0,
    adapt_window: float = linear.ADAPT_WINDOW,
    refactor_every: int = 1000,
    n_ids: int = 4096,
    id_ridge: float = 10.0,
    position_bias: tuple[float, ...] = (1.0,),
) -> Policy:
    """SquareCB with the linear ridge regressor as its oracle.

    Args:
        gamma_scale: IGW learning-rate scale.
        gamma_exponent: growth of the learning rate with the rows learned from.
        ridge, discount, adapt_window, refactor_every, n_ids, id_ridge, position_bias: see
            ``bandits.linucb``.
    """
    if not gamma_scale > 0:
        raise ValueError(f"gamma_scale must be > 0, got {gamma_scale}")
    if gamma_exponent < 0:
        raise ValueError(f"gamma_exponent must be >= 0, got {gamma_exponent}")

    def explore(
        state: linear.AnyLinear, scores: Array, mask: Array, key: Array, slate_size: int
    ) -> Ranked:
        gamma = gamma_scale * (state.n.astype(jnp.float32) + 1.0) ** gamma_exponent
        return slates.sequential(slates.igw_probs(gamma), scores, mask, key, slate_size)

    return linear.make_explorer(
        "squarecb",
        VERSION,
        {"gamma_scale": float(gamma_scale), "gamma_exponent": float(gamma_exponent)},
        linear.LinearParams(
            ridge, discount, refactor_every, n_ids, id_ridge, position_bias, adapt_window
        ),
        explore,
    )
