"""Self-normalised doubly robust: DR whose residual correction is divided by the mean weight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bandits.ope.base import (
    AbstractSingleActionEstimator,
    expected_q,
    logged_q,
    logged_target_prob,
    require_q_hat,
)
from bandits.ope.types import LoggedFeedback, RoundValues, TargetProbs


@dataclass(frozen=True)
class SelfNormalizedDR(AbstractSingleActionEstimator):
    """Self-normalised doubly robust (SNDR).

    Notes:
        ``V = 1/n sum_i sum_a target_prob[i, a] q_hat[i, a]
        + sum_i w_i (r_i - q_hat[i, a_i]) / sum_i w_i``.

    References:
        Kallus and Uehara, "Intrinsically efficient, stable, and bounded off-policy evaluation
        for reinforcement learning", NeurIPS 2019; obp's ``SelfNormalizedDoublyRobust``.
    """

    name: ClassVar[str] = "sndr"

    def round_values(self, log: LoggedFeedback, target: TargetProbs) -> RoundValues:
        baseline = expected_q(require_q_hat(log), target.target_prob)
        w = logged_target_prob(log, target) / log.propensity
        return RoundValues(direct=baseline, weighted=w * (log.reward - logged_q(log)), normaliser=w)
