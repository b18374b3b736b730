"""Self-normalised doubly robust: DR whose residual correction is divided by the mean weight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bandits.ope.base import AbstractSingleActionEstimator, doubly_robust, importance_weight
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
        return doubly_robust(log, target, importance_weight(log, target), self_normalised=True)
