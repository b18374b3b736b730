"""Inverse propensity scoring (IPS), the unbiased baseline of every weighting estimator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bandits.ope._common import ones, zeros
from bandits.ope.base import AbstractSingleActionEstimator, importance_weight
from bandits.ope.types import LoggedFeedback, RoundValues, TargetProbs


@dataclass(frozen=True)
class InverseProbabilityWeighting(AbstractSingleActionEstimator):
    """Inverse propensity scoring (IPS).

    Notes:
        ``V = 1/n sum_i w_i r_i`` with ``w_i = target_prob[i, a_i] / propensity_i``. Unbiased
        when propensities are right and the logging policy covers the target's actions.

    References:
        Horvitz and Thompson, J. Am. Stat. Assoc. 1952; Precup et al., ICML 2000.

    Example:
        >>> import numpy as np
        >>> from bandits.ope.types import LoggedFeedback, TargetProbs
        >>> log = LoggedFeedback(np.array([0, 1]), np.array([1.0, 0.0]), np.array([0.5, 0.5]))
        >>> InverseProbabilityWeighting().estimate(
        ...     log, TargetProbs(np.array([[1.0, 0.0]] * 2)), interval="normal").value
        1.0
    """

    name: ClassVar[str] = "ips"

    def round_values(self, log: LoggedFeedback, target: TargetProbs) -> RoundValues:
        w = importance_weight(log, target)
        return RoundValues(direct=zeros(log.n), weighted=w * log.reward, normaliser=ones(log.n))
