"""Every estimator by its short name: an explicit table, no introspection."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from bandits.ope.base import AbstractSingleActionEstimator, AbstractSlateEstimator
from bandits.ope.clipped_ips import ClippedIPS
from bandits.ope.dm import DirectMethod
from bandits.ope.dr import DoublyRobust
from bandits.ope.dr_shrinkage import DROptimisticShrinkage
from bandits.ope.ips import InverseProbabilityWeighting
from bandits.ope.replay import Replay
from bandits.ope.slate_cascade_dr import SlateCascadeDR
from bandits.ope.slate_iips import SlateIndependentIPS
from bandits.ope.slate_pi import SlatePseudoInverse
from bandits.ope.slate_rips import SlateRewardInteractionIPS, SlateRewardInteractionSNIPS
from bandits.ope.slate_sips import SlateStandardIPS
from bandits.ope.sndr import SelfNormalizedDR
from bandits.ope.snips import SelfNormalizedIPS
from bandits.ope.switch_dr import SwitchDR

ESTIMATORS: Mapping[str, type[AbstractSingleActionEstimator]] = MappingProxyType(
    {
        "dm": DirectMethod,
        "ips": InverseProbabilityWeighting,
        "snips": SelfNormalizedIPS,
        "clipped_ips": ClippedIPS,
        "dr": DoublyRobust,
        "sndr": SelfNormalizedDR,
        "switch_dr": SwitchDR,
        "dr_os": DROptimisticShrinkage,
        "replay": Replay,
    }
)
"""Single-action estimators with their default settings."""

NEEDS_Q_HAT: frozenset[str] = frozenset({"dm", "dr", "sndr", "switch_dr", "dr_os"})
"""Single-action estimators that need ``LoggedFeedback.q_hat``."""

SLATE_ESTIMATORS: Mapping[str, type[AbstractSlateEstimator]] = MappingProxyType(
    {
        "sips": SlateStandardIPS,
        "iips": SlateIndependentIPS,
        "rips": SlateRewardInteractionIPS,
        "rips_sn": SlateRewardInteractionSNIPS,
        "pi": SlatePseudoInverse,
        "cascade_dr": SlateCascadeDR,
    }
)
"""Slate estimators with their default settings."""


def get(name: str) -> AbstractSingleActionEstimator:
    """The single-action estimator ``name`` with default settings.

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    try:
        return ESTIMATORS[name]()
    except KeyError:
        raise KeyError(f"unknown estimator {name!r}; known: {sorted(ESTIMATORS)}") from None
