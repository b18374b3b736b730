"""Independent-item IPS: each position's reward weighted by that position's own ratio."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from bandits.ope._common import ones, zeros
from bandits.ope.base import AbstractSlateEstimator
from bandits.ope.types import LoggedSlates, RoundValues, SlateTargetProbs


def marginal_position_weights(log: LoggedSlates, target: SlateTargetProbs) -> np.ndarray:
    """``(n, s)`` ratios of the target's to the logging policy's marginal probability per position."""
    marginal = target.target_prob if target.marginal is None else target.marginal
    t = np.take_along_axis(marginal, log.slate[:, :, None], axis=2)[:, :, 0].astype(np.float64)
    p = log.propensity if log.marginal_propensity is None else log.marginal_propensity
    return t / p


@dataclass(frozen=True)
class SlateIndependentIPS(AbstractSlateEstimator):
    """Independent-item IPS (IIPS).

    Notes:
        ``V = 1/n sum_i sum_l (marginal_target[i, l, a_il] / marginal_propensity_il) r_il``.
        Unbiased when the reward at a position depends only on the item there (no interaction
        between positions); low variance.

    References:
        Li, Kim and Zitouni, "Offline evaluation of ranking policies with click models", KDD 2018.
    """

    name: ClassVar[str] = "iips"

    def round_values(self, log: LoggedSlates, target: SlateTargetProbs) -> RoundValues:
        w = marginal_position_weights(log, target)
        return RoundValues(zeros(log.n), (w * log.reward).sum(axis=1), ones(log.n))
