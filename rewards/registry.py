"""Every reward-model factory by name: an explicit dict, no introspection.

A configuration names its model and its hyperparameters, and builds it with
``MODELS[name](**params)``; the name is the factory's ``spec.name``. Every model is here, the
session model (which needs ``history`` in its inputs) included.

Example:
    >>> import rewards
    >>> MODELS["survival"] is rewards.survival_model, sorted(MODELS)
    (True, ['completion', 'direct', 'session', 'skip', 'survival'])
    >>> MODELS["session"](gru_units=8).spec.name
    'session'
"""

from __future__ import annotations

from collections.abc import Callable

from rewards.classifier import completion_model, direct_model, skip_model
from rewards.model import RewardModel
from rewards.session import session_model
from rewards.survival import survival_model

__all__ = ["MODELS"]

MODELS: dict[str, Callable[..., RewardModel]] = {
    "survival": survival_model,
    "session": session_model,
    "skip": skip_model,
    "completion": completion_model,
    "direct": direct_model,
}
