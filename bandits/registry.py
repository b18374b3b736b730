"""Every policy by name: an explicit dict, no introspection.

``streaming`` builds the configured policy with ``POLICIES[config.policy.name](**params)``.
"""

from __future__ import annotations

from collections.abc import Callable

from bandits.linucb import linucb
from bandits.policy import Policy
from bandits.uniform import uniform

__all__ = ["POLICIES"]

POLICIES: dict[str, Callable[..., Policy]] = {
    "linucb": linucb,
    "uniform": uniform,
}
