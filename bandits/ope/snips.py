"""Self-normalised IPS: IPS divided by the mean weight; bounded by the rewards' range."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bandits.ope._common import zeros
from bandits.ope.base import AbstractSingleActionEstimator, importance_weight
from bandits.ope.types import LoggedFeedback, RoundValues, TargetProbs


@dataclass(frozen=True)
class SelfNormalizedIPS(AbstractSingleActionEstimator):
    """Self-normalised inverse propensity scoring (SNIPS).

    Notes:
        ``V = sum_i w_i r_i / sum_i w_i``. Consistent, slightly biased at small ``n``, usually
        much less variable than IPS. Intervals resample numerator and denominator together.

    References:
        Swaminathan and Joachims, "The self-normalized estimator for counterfactual learning",
        NeurIPS 2015.
    """

    name: ClassVar[str] = "snips"

    def round_values(self, log: LoggedFeedback, target: TargetProbs) -> RoundValues:
        w = importance_weight(log, target)
        return RoundValues(direct=zeros(log.n), weighted=w * log.reward, normaliser=w)
