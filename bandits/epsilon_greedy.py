"""Epsilon-greedy over the ridge estimate of the shared linear model.

At each slate position: with probability ``1 - epsilon`` the best remaining candidate, else a
uniform one among the remaining. The propensity of each choice is exact:
``(1 - epsilon) [a is best] + epsilon / remaining``.
"""

from __future__ import annotations

from jaxtyping import Array

from bandits import linear, slates
from bandits.policy import Policy
from bandits.types import Ranked

__all__ = ["epsilon_greedy"]

VERSION = 1


def epsilon_greedy(
    *,
    epsilon: float = 0.05,
    ridge: float = 1.0,
    discount: float = 1.0,
    adapt_window: float = linear.ADAPT_WINDOW,
    refactor_every: int = 1000,
    n_ids: int = 4096,
    id_ridge: float = 10.0,
    position_bias: tuple[float, ...] = (1.0,),
) -> Policy:
    """Epsilon-greedy.

    Args:
        epsilon: exploration probability per position, in ``(0, 1]``.
        ridge, discount, adapt_window, refactor_every, n_ids, id_ridge, position_bias: see
            ``bandits.linucb``.
    """
    if not 0.0 < epsilon <= 1.0:
        raise ValueError(f"epsilon must be in (0, 1], got {epsilon}")

    def explore(
        state: linear.AnyLinear, scores: Array, mask: Array, key: Array, slate_size: int
    ) -> Ranked:
        del state
        return slates.sequential(slates.epsilon_probs(epsilon), scores, mask, key, slate_size)

    return linear.make_explorer(
        "epsilon_greedy",
        VERSION,
        {"epsilon": float(epsilon)},
        linear.LinearParams(
            ridge, discount, refactor_every, n_ids, id_ridge, position_bias, adapt_window
        ),
        explore,
    )
