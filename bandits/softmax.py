"""Softmax (Boltzmann) exploration over the ridge estimate; slates are Plackett-Luce.

``P(a) ∝ exp(mean_a / temperature)`` among the remaining candidates at each position, sampled
exactly with Gumbel-top-s; every propensity is exact.
"""

from __future__ import annotations

from jaxtyping import Array

from bandits import linear, slates
from bandits.policy import Policy
from bandits.types import Ranked

__all__ = ["softmax"]

VERSION = 1


def softmax(
    *,
    temperature: float = 0.02,
    ridge: float = 1.0,
    discount: float = 1.0,
    adapt_window: float = linear.ADAPT_WINDOW,
    refactor_every: int = 1000,
    n_ids: int = 4096,
    id_ridge: float = 10.0,
    position_bias: tuple[float, ...] = (1.0,),
) -> Policy:
    """Softmax exploration.

    Args:
        temperature: softmax temperature in reward units (> 0).
        ridge, discount, adapt_window, refactor_every, n_ids, id_ridge, position_bias: see
            ``bandits.linucb``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def explore(
        state: linear.AnyLinear, scores: Array, mask: Array, key: Array, slate_size: int
    ) -> Ranked:
        del state
        return slates.plackett_luce(scores / temperature, mask, key, slate_size)

    return linear.make_explorer(
        "softmax",
        VERSION,
        {"temperature": float(temperature)},
        linear.LinearParams(
            ridge, discount, refactor_every, n_ids, id_ridge, position_bias, adapt_window
        ),
        explore,
    )
