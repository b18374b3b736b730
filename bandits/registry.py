"""Every policy factory by name: an explicit dict, no introspection.

The values are the factories themselves (``POLICIES["linucb"] is bandits.linucb``), so a
configuration builds its policy with ``POLICIES[config.policy.name](**params)``, and the name is
the factory's ``spec.name``.

Example:
    >>> import bandits
    >>> POLICIES["linucb"] is bandits.linucb, POLICIES["squarecb"](gamma_scale=5.0).spec.name
    (True, 'squarecb')
"""

from __future__ import annotations

from collections.abc import Callable

from bandits.disjoint import disjoint_linucb
from bandits.epsilon_greedy import epsilon_greedy
from bandits.linucb import linucb
from bandits.logistic_ts import logistic_ts
from bandits.neural_linear import neural_linear
from bandits.policy import Policy
from bandits.softmax import softmax
from bandits.squarecb import squarecb
from bandits.thompson import lin_ts
from bandits.uniform import uniform

__all__ = ["POLICIES"]

POLICIES: dict[str, Callable[..., Policy]] = {
    "linucb": linucb,
    "lin_ts": lin_ts,
    "logistic_ts": logistic_ts,
    "squarecb": squarecb,
    "epsilon_greedy": epsilon_greedy,
    "softmax": softmax,
    "neural_linear": neural_linear,
    "disjoint_linucb": disjoint_linucb,
    "uniform": uniform,
}
