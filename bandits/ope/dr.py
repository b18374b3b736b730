"""Doubly robust estimation: the direct method plus an IPS correction of its residuals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bandits.ope.base import AbstractSingleActionEstimator, doubly_robust, importance_weight
from bandits.ope.types import LoggedFeedback, RoundValues, TargetProbs


@dataclass(frozen=True)
class DoublyRobust(AbstractSingleActionEstimator):
    """Doubly robust (DR) estimator.

    Notes:
        ``V = 1/n sum_i [ sum_a target_prob[i, a] q_hat[i, a] + w_i (r_i - q_hat[i, a_i]) ]``.
        Unbiased if propensities are right, whatever ``q_hat``; its variance shrinks as
        ``q_hat`` improves. Fit ``q_hat`` by cross-fitting (``reward_model.cross_fit_q_hat``) so
        a row's own reward does not shape its own baseline.

    References:
        Dudik, Langford and Li, "Doubly robust policy evaluation and learning", ICML 2011.
    """

    name: ClassVar[str] = "dr"

    def round_values(self, log: LoggedFeedback, target: TargetProbs) -> RoundValues:
        return doubly_robust(log, target, importance_weight(log, target))
