"""The replay method: average the rewards of the rounds where the target agrees with the log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bandits.ope._common import zeros
from bandits.ope.base import AbstractSingleActionEstimator, logged_target_prob
from bandits.ope.types import LoggedFeedback, RoundValues, TargetProbs


@dataclass(frozen=True)
class Replay(AbstractSingleActionEstimator):
    """Replay (rejection sampling) estimator.

    Notes:
        ``V = sum_i target_prob[i, a_i] r_i / sum_i target_prob[i, a_i]``: the mean reward of
        the rounds the target would have played the same way (in expectation over the target's
        own randomness). Unbiased only when the logging policy is uniform over the actions, the
        setting it was proposed for; it ignores ``propensity`` otherwise.

    References:
        Li, Chu, Langford and Wang, "Unbiased offline evaluation of contextual-bandit-based news
        article recommendation algorithms", WSDM 2011.
    """

    name: ClassVar[str] = "replay"

    def caveats(self, log: LoggedFeedback, target: TargetProbs) -> str:
        """Replay is biased unless every logged propensity is the same (uniform logging)."""
        del target
        if float(log.propensity.min()) != float(log.propensity.max()):
            return "replay: propensities vary, so logging was not uniform and replay is biased"
        return ""

    def round_values(self, log: LoggedFeedback, target: TargetProbs) -> RoundValues:
        t = logged_target_prob(log, target)
        return RoundValues(direct=zeros(log.n), weighted=t * log.reward, normaliser=t)
