"""Standard slate IPS: weight the whole slate's reward by the whole slate's probability ratio."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bandits.ope._common import ones, zeros
from bandits.ope.base import AbstractSlateEstimator, slate_position_weights
from bandits.ope.types import LoggedSlates, RoundValues, SlateTargetProbs


@dataclass(frozen=True)
class SlateStandardIPS(AbstractSlateEstimator):
    """Standard IPS on whole slates (SIPS).

    Notes:
        ``V = 1/n sum_i (prod_l w_il) sum_l r_il`` with the conditional ratios
        ``w_il = target_prob[i, l, a_il] / propensity_il``. Unbiased under any reward structure;
        its variance grows exponentially with the slate length.

    References:
        Li, Kim and Zitouni, "Offline evaluation of ranking policies with click models", KDD 2018.
    """

    name: ClassVar[str] = "sips"

    def round_values(self, log: LoggedSlates, target: SlateTargetProbs) -> RoundValues:
        w = slate_position_weights(log, target).prod(axis=1)
        return RoundValues(zeros(log.n), w * log.reward.sum(axis=1), ones(log.n))
