"""The engine a config describes: policy, reward model, composite reward, join and log settings.

Built once per worker (and per re-ranker, which scores with the same policy) from the validated
config; also the decoder's limits, from the config's event sizes.
"""

from __future__ import annotations

from typing import Any

import rewards
from bandits import POLICIES
from rewards.session import HISTORY_DIM
from streaming.config import Config
from streaming.core.state import Engine
from streaming.events import Limits

__all__ = [
    "limits",
    "make_engine",
]


def make_engine(config: Config) -> Engine:
    """The policy named in the config, with the join settings and feature sizes."""
    try:
        factory = POLICIES[config.policy.name]
    except KeyError:
        raise ValueError(
            f"policy.name {config.policy.name!r} is not one of {sorted(POLICIES)}"
        ) from None
    policy = factory(**dict(config.policy.params))
    composite = rewards.CompositeReward(kind=config.reward.kind, **dict(config.reward.params))
    model = rewards.MODELS[config.reward.model](**dict(config.reward.model_params))
    composite.check(model.spec)
    history_length, history_dim = _history(config, model.spec)
    return Engine(
        policy=policy,
        join_config=config.join,
        d_user=config.events.d_user,
        d_track=config.events.d_track,
        reward_model=model,
        composite=composite,
        log_candidates=config.log.max_candidates if config.log.dir else 0,
        log_features=config.log.candidate_features,
        share_deltas=_shares(config, policy),
        log_predictions=bool(config.log.dir) and config.log.reward_plays,
        update_every_ms=config.policy.update_every_ms,
        history_length=history_length,
        history_dim=history_dim,
        history_listeners=config.reward.history_listeners,
    )


def _history(config: Config, spec: rewards.ModelSpec) -> tuple[int, int]:
    """The history a reward model reads: ``(length, floats per entry)``, ``(0, 0)`` for none.

    A worker's history entries are each play's outcome (``rewards.session.HISTORY_DIM`` floats),
    with the played track's features after them when the model's ``history_dim`` has room for
    exactly those.
    """
    if "history_dim" not in spec.params:
        return 0, 0
    dim = int(spec.params["history_dim"])
    plain, with_track = HISTORY_DIM, HISTORY_DIM + config.events.d_track
    if dim not in (plain, with_track):
        raise ValueError(
            f"reward.model_params.history_dim is {dim}: a worker's history entries have "
            f"{plain} floats (the play's outcome) or {with_track} (and the track's "
            f"{config.events.d_track} features)"
        )
    return config.reward.history_length, dim


def _shares(config: Config, policy: Any) -> bool:
    if not config.scale.share_deltas:
        return False
    from bandits.linear import LinearState

    if not isinstance(policy.init(config.events.d_user, config.events.d_track), LinearState):
        raise ValueError(
            f"scale.share_deltas needs a linear policy (additive statistics); "
            f"{config.policy.name!r} is not one"
        )
    return True


def limits(config: Config) -> Limits:
    """The decoder's limits: the config's event sizes and bounds; ``max_event_ahead_ms`` -1
    is the join's ``allowed_lateness_ms``."""
    e = config.events
    ahead = e.max_event_ahead_ms
    return Limits(
        d_user=e.d_user,
        d_track=e.d_track,
        max_candidates=e.max_candidates,
        max_message_bytes=e.max_message_bytes,
        min_propensity=e.min_propensity,
        max_feature_norm=e.max_feature_norm,
        max_event_ahead_ms=config.join.allowed_lateness_ms if ahead < 0 else ahead,
    )
